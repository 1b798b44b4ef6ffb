"""A Run is one generation: its events, what they add up to, and the means to stop it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from parley.chat.steps import StepRecord
from parley.errors import ParleyError, as_parley_error
from parley.events import (
    EventBatch,
    Finish,
    FinishReason,
    ReasoningDelta,
    Sources,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from parley.ids import unique_hex
from parley.models.base import FunctionCall, ToolCall


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


Outcome = Literal["complete", "cancelled", "failed"]
RunEnded = Callable[["Run"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Timing:
    time_to_first_token_ms: float | None
    total_ms: float
    tokens_per_second: float | None


class Run:
    """Wraps a model's event stream; iterate it once (by event or by batch), close it to cancel."""

    def __init__(
        self,
        model: str,
        batches: AsyncIterator[EventBatch],
        normalise: Callable[[EventBatch], EventBatch] | None = None,
    ) -> None:
        self.id = f"run_{unique_hex()}"
        self.model = model
        self.created = int(time.time())
        self._batches = batches
        self._normalise = normalise
        self._head: asyncio.Task[EventBatch] | None = None
        self._started = time.perf_counter()
        self._first_token_at: float | None = None
        self._ended_at: float | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, _ToolCallParts] = {}
        self.usage: Usage | None = None
        self.finish_reason: FinishReason | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self._on_end: list[RunEnded] = []
        self._closed = False
        self._on_closed: Callable[[Run], None] | None = None
        # Set when the run was ended from outside (the server stopping): the error its client gets.
        self.interruption: ParleyError | None = None
        self._stop: Callable[[], None] | None = None
        # An `on_end` callback that failed (the reply could not be saved): the client is told.
        self.end_failure: ParleyError | None = None
        # An agent's steps (tool calls and results, the agents that answered), when it took any.
        self.steps: StepRecord | None = None
        # The passages the reply draws on (a turn with collections): its first event, before any token.
        self.sources: Sources | None = None
        self._sources_sent = False

    def on_end(self, callback: RunEnded) -> None:
        """Call `callback(run)` once when the run is closed, whatever its outcome.

        A callback that raises a ParleyError becomes `end_failure`; the others still run."""
        self._on_end.append(callback)

    def on_closed(self, callback: Callable[[Run], None]) -> None:
        """Call `callback(run)` after the `on_end` callbacks have all run (one such callback)."""
        self._on_closed = callback

    def bind_stop(self, stop: Callable[[], None]) -> None:
        """How the transport consuming this run stops consuming it (e.g. a cancel scope's cancel)."""
        self._stop = stop

    def stop_with(self, error: ParleyError) -> None:
        """End the run now, from outside: the model stops, and its client gets `error` as the last event."""
        if self._closed:
            return
        self.interruption = error
        if self._head is not None and not self._head.done():
            self._head.cancel()
        elif self._stop is not None:
            self._stop()

    async def wait_for_head(self, seconds: float) -> None:
        """Let the first event arrive for up to `seconds`; a failure within that time raises here.

        Streaming transports call this before sending their status line, so that a model
        that fails at once (unreachable, bad key) gets an HTTP error instead of a 200 stream.
        """
        if self._head is None:
            self._head = asyncio.ensure_future(self._first_batch())
        await _done_within(self._head, seconds)
        if self._head.cancelled():  # stopped before it could start: stop_with()
            self._head = None
            raise self.interruption or asyncio.CancelledError()
        if self._head.done():
            error = self._head.exception()
            if error is not None and not isinstance(error, StopAsyncIteration):
                self._head = None
                self.outcome, self.error = "failed", as_parley_error(error).message
                raise error

    async def _first_batch(self) -> EventBatch:
        """The model's first batch with anything in it once normalised (StopAsyncIteration if none)."""
        try:
            async for raw in self._batches:
                batch = self._normalised(raw)
                if batch:
                    return batch
        except asyncio.CancelledError:
            if self.interruption is not None:
                raise self.interruption from None
            raise
        raise StopAsyncIteration

    def _normalised(self, batch: EventBatch) -> EventBatch:
        return batch if self._normalise is None else self._normalise(batch)

    @property
    def closed(self) -> bool:
        """`aclose` has been called (the model is stopped, or stopping, and the end callbacks run)."""
        return self._closed

    @property
    def head_ready(self) -> bool:
        """Iterating will give the first event (or end) at once, without waiting for the model."""
        return self._head is not None and self._head.done()

    async def batches(self) -> AsyncGenerator[EventBatch, None]:
        """The events in the batches the model made them: what a transport can send in one write."""
        try:
            if self.interruption is not None:
                raise self.interruption
            if self._head is not None:
                head, self._head = self._head, None
                try:
                    batch = await head
                except StopAsyncIteration:
                    return
                self._record(batch)
                yield self._first(batch)
            async for raw in self._batches:
                batch = self._normalised(raw)
                if batch:
                    self._record(batch)
                    yield self._first(batch) if not self._sources_sent else batch
            self.outcome = "complete"
        except Exception as exc:
            self.outcome, self.error = "failed", as_parley_error(exc).message
            raise
        finally:
            self._ended_at = time.perf_counter()

    def _first(self, batch: EventBatch) -> EventBatch:
        """The first batch, led by the run's sources when it has them."""
        self._sources_sent = True
        return batch if self.sources is None else [self.sources, *batch]

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    def _record(self, batch: EventBatch) -> None:
        for event in batch:
            if isinstance(event, TextDelta):
                self._text.append(event.text)
            elif isinstance(event, ReasoningDelta):
                self._reasoning.append(event.text)
            elif isinstance(event, ToolCallDelta):
                if event.server:  # (an agent's step: kept in `steps`, not the reply's own tool calls)
                    continue
                parts = self._tool_calls.setdefault(event.index, _ToolCallParts())
                parts.id = parts.id or event.id or ""
                parts.name = parts.name or event.name or ""
                parts.arguments.append(event.arguments)
            elif isinstance(event, Usage):
                self.usage = event
                continue
            elif isinstance(event, Finish):
                self.finish_reason = event.reason
                continue
            else:  # an agent's step events: not tokens of the reply
                continue
            if self._first_token_at is None:
                self._first_token_at = time.perf_counter()

    async def aclose(self) -> None:
        """Stop the generation (if still running), release the model, and run the end callbacks."""
        if self._closed:
            return
        self._closed = True
        if self._head is not None:
            # The generator can't be closed while the head task is inside it: stop that first.
            self._head.cancel()
            await asyncio.wait({self._head})
            self._head = None
        try:
            aclose = getattr(self._batches, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._ended_at is None:
                self._ended_at = time.perf_counter()
            if self.outcome is None:
                self.outcome = "cancelled" if self.interruption is None else "failed"
            if self.interruption is not None:
                self.error = self.interruption.message
            callbacks, self._on_end = self._on_end, []
            try:
                for callback in callbacks:
                    try:
                        await callback(self)
                    except ParleyError as exc:
                        self.end_failure = self.end_failure or exc
            finally:
                if self._on_closed is not None:
                    self._on_closed(self)

    async def collect(self) -> None:
        """Run to the end, for replies that are not streamed."""
        async for _ in self:
            pass

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def ended_because(self) -> str:
        """Why the reply ended, as clients are told: the model's reason, else cancelled or stop."""
        return self.finish_reason or ("cancelled" if self.outcome == "cancelled" else "stop")

    @property
    def pieces(self) -> int:
        """How many pieces of text and reasoning have come: grows whenever the reply does."""
        return len(self._text) + len(self._reasoning)

    @property
    def reasoning(self) -> str | None:
        return "".join(self._reasoning) if self._reasoning else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(
                id=parts.id or f"call_{self.id[4:16]}_{index}",
                function=FunctionCall(name=parts.name, arguments="".join(parts.arguments)),
            )
            for index, parts in sorted(self._tool_calls.items())
        ]

    def timing(self) -> Timing:
        end = self._ended_at if self._ended_at is not None else time.perf_counter()
        ttft = None if self._first_token_at is None else (self._first_token_at - self._started) * 1000
        rate = None
        if self.usage is not None and self._first_token_at is not None and end > self._first_token_at:
            rate = self.usage.completion_tokens / (end - self._first_token_at)
        return Timing(ttft, (end - self._started) * 1000, rate)


async def _done_within(future: asyncio.Future[EventBatch], seconds: float) -> None:
    """Wait until `future` is done or `seconds` have passed: asyncio.wait without its bookkeeping
    (a set, a coroutine check per member, a callback per member), which showed in every request."""
    if future.done():
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(seconds, wake)
    future.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
