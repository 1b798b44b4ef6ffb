"""Per-generation metrics, heard through the admission seam so that every transport is counted.

The gate admits everything. What it returns for a (model, key alias) pair is built once and
reused by every generation of that pair: attaching a run costs a gauge increment and one
`on_end` callback, and no object of its own.
"""

from __future__ import annotations

from contextvars import ContextVar

from parley.access.principal import Principal
from parley.chat.run import Run
from parley.models.base import ChatRequest
from parley.models.registry import ModelEntry
from parley.observability.families import Buckets, Value
from parley.observability.metrics import Metrics

# The generation the current request began (its model and tokens go on its JSON access line).
request_run: ContextVar[Run | None] = ContextVar("parley_request_run", default=None)


class _Observed:
    """The admission of every generation of one (model, key alias)."""

    __slots__ = ("_completion", "_duration", "_in_progress", "_metrics", "_model", "_outcomes", "_prompt", "_ttft")

    def __init__(self, metrics: Metrics | None, model: str, alias: str) -> None:
        self._metrics = metrics
        self._model = model
        self._outcomes: dict[str, Value] = {}
        self._in_progress: Value | None = None
        if metrics is not None:
            self._in_progress = metrics.streams_in_progress.labels(model)
            self._ttft: Buckets = metrics.time_to_first_token.labels(model)
            self._duration: Buckets = metrics.generation_duration.labels(model)
            self._prompt: Value = metrics.prompt_tokens.labels(model, alias)
            self._completion: Value = metrics.completion_tokens.labels(model, alias)

    def attach(self, run: Run) -> None:
        request_run.set(run)
        if self._in_progress is not None:
            self._in_progress.inc()
            run.on_end(self._ended)

    async def release(self) -> None:
        pass

    async def _ended(self, run: Run) -> None:
        assert self._in_progress is not None and self._metrics is not None
        self._in_progress.dec()
        timing = run.timing()
        if timing.time_to_first_token_ms is not None:
            self._ttft.observe(timing.time_to_first_token_ms / 1000)
        self._duration.observe(timing.total_ms / 1000)
        usage = run.usage
        if usage is not None:
            self._prompt.inc(usage.prompt_tokens)
            self._completion.inc(usage.completion_tokens)
        outcome = run.outcome or "cancelled"
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self._metrics.generations.labels(self._model, outcome)
        counter.inc()


class GenerationGate:
    """A Gate that refuses nothing: it counts generations (when `metrics` are collected) and
    remembers each request's generation, for the model and tokens of its JSON access line."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._observed: dict[tuple[str, str], _Observed] = {}

    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> _Observed:
        key = (entry.config.name, principal.alias)
        observed = self._observed.get(key)
        if observed is None:
            observed = self._observed[key] = _Observed(self._metrics, *key)
        return observed
