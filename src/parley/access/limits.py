"""The limits gate: per key and per model, requests and tokens a minute, streams at once, and
daily and monthly token budgets, checked and reserved once per generation.

A generation reserves its prompt's estimated tokens plus the most its reply may use (the
request's max_tokens, else the model's default, else `reserve_tokens`) before it begins, and is
settled against the usage it really had when it ends, so concurrent requests can't overrun a
budget. The estimate is the cheap one (about four characters a token, no tokenizer on the
request path): settlement corrects it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

from parley.access.limit_counters import NEVER, Ask, Counters, LimitedScope, Verdict, budget_periods
from parley.access.principal import KeyLimits, Principal
from parley.access.ratelimit_headers import add_rate_limit_headers
from parley.chat.run import Run
from parley.config import ModelConfig
from parley.errors import RateLimited
from parley.ids import unique_hex
from parley.models.base import ChatRequest, estimate_tokens
from parley.models.registry import ModelEntry

log = logging.getLogger("parley.access.limits")

_WHAT = {
    "rate_limit_requests": "requests per minute",
    "rate_limit_tokens": "tokens per minute",
    "too_many_streams": "replies at once",
    "daily_budget_exceeded": "tokens per day",
    "monthly_budget_exceeded": "tokens per month",
}


def model_limits(models: Iterable[ModelConfig]) -> dict[str, KeyLimits]:
    """The limits configured on models, by model name (models without any left out)."""
    found: dict[str, KeyLimits] = {}
    for model in models:
        if model.limits is not None:
            limits = KeyLimits(**model.limits.model_dump())
            if limits.any:
                found[model.name] = limits
    return found


class LimitGate:
    def __init__(
        self,
        counters: Counters,
        model_limits: dict[str, KeyLimits],
        *,
        reserve_tokens: int,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._counters = counters
        self._on_refused = on_refused  # told (limit, key alias) of each refusal: the metrics
        self._model_scopes = {name: LimitedScope(f"model:{name}", limits) for name, limits in model_limits.items()}
        self._key_scopes: dict[str, LimitedScope] = {}  # built once per key (and again if its limits change)
        self._reserve_tokens = reserve_tokens
        self._periods = ("", "", 0.0, 0.0)  # today's and this month's names, when each ends (epoch seconds)

    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> _Reservation | None:
        scopes = self._scopes(principal, entry.config.name)
        if not scopes:
            return None
        prompt = reply = 0
        if any(_counts_tokens(scope.limits) for scope in scopes):
            prompt, reply = self.estimate(entry, request)
        now = time.time()
        day, month, day_ends, month_ends = self._periods
        if now >= day_ends:
            day, month, until_next_day, until_next_month = budget_periods(now)
            day_ends, month_ends = now + until_next_day, now + until_next_month
            self._periods = (day, month, day_ends, month_ends)
        ask = Ask(scopes, prompt + reply, unique_hex(), day, month, day_ends - now, month_ends - now)
        verdict = await self._counters.reserve(ask)
        add_rate_limit_headers(_headers(ask, verdict))
        if verdict.refusal is not None:
            if self._on_refused is not None:
                self._on_refused(verdict.refusal, principal.alias)
            raise _refused(ask, verdict)
        return _Reservation(self._counters, ask, verdict.window, prompt)

    def _scopes(self, principal: Principal, model: str) -> tuple[LimitedScope, ...]:
        model_scope = self._model_scopes.get(model)
        if principal.key_id is None or not principal.limits.any:
            return () if model_scope is None else (model_scope,)
        key_scope = self._key_scopes.get(principal.key_id)
        if key_scope is None or key_scope.limits != principal.limits:
            key_scope = self._key_scopes[principal.key_id] = LimitedScope(f"key:{principal.key_id}", principal.limits)
        return (key_scope,) if model_scope is None else (key_scope, model_scope)

    def estimate(self, entry: ModelEntry, request: ChatRequest) -> tuple[int, int]:
        """The tokens a generation may use: its prompt's (estimated) and the most its reply's may be."""
        prompt = sum(estimate_tokens(message.text()) + 4 for message in request.messages)
        reply = request.params.max_tokens or entry.config.defaults.max_tokens or self._reserve_tokens
        return prompt, reply

    async def aclose(self) -> None:
        await self._counters.aclose()


def _counts_tokens(limits: KeyLimits) -> bool:
    return limits.tokens_per_minute is not None or limits.daily_tokens is not None or limits.monthly_tokens is not None


class _Reservation:
    """A granted reservation: settled when its run ends, refunded whole if it never begins."""

    __slots__ = ("_ask", "_counters", "_done", "_prompt_tokens", "_window")

    def __init__(self, counters: Counters, ask: Ask, window: int, prompt_tokens: int) -> None:
        self._counters = counters
        self._ask = ask
        self._window = window
        self._prompt_tokens = prompt_tokens
        self._done = False

    def attach(self, run: Run) -> None:
        run.on_end(self._settle)

    async def _settle(self, run: Run) -> None:
        if self._done:
            return
        self._done = True
        ask = self._ask
        delta = 0
        if ask.tokens:
            if run.usage is not None:
                used = run.usage.prompt_tokens + run.usage.completion_tokens
            else:  # ended before the model said (cancelled): the prompt and what was produced, estimated
                produced = estimate_tokens(run.text) + estimate_tokens(run.reasoning or "")
                used = min(ask.tokens, self._prompt_tokens + produced)
            delta = used - ask.tokens
        if delta == 0 and not any(scope.limits.max_streams is not None for scope in ask.scopes):
            return  # nothing to correct, no slot to free: no round trip
        try:
            await self._counters.settle(ask, self._window, tokens_delta=delta, requests_delta=0)
        except Exception:  # the counters expire by themselves; a finished reply is not failed for this
            log.exception("could not settle a limits reservation")

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._counters.settle(self._ask, self._window, tokens_delta=-self._ask.tokens, requests_delta=-1)
        except Exception:  # (the refusal or failure that ended the request is what its client hears)
            log.exception("could not give back a limits reservation")


def _refused(ask: Ask, verdict: Verdict) -> RateLimited:
    assert verdict.refusal is not None
    scope = ask.scopes[verdict.scope]
    whose = "this model's" if scope.name.startswith("model:") else "this key's"
    what = _WHAT[verdict.refusal]
    if verdict.retry_after == NEVER:
        message = (
            f"this request may use up to {ask.tokens} tokens (its prompt and max_tokens), more than "
            f"{whose} limit of {what} allows: lower max_tokens or shorten the conversation"
        )
        retry = 60
    else:
        retry = max(1, math.ceil(verdict.retry_after))
        message = f"{whose} limit of {what} is reached; retry in {retry} s"
    return RateLimited(message, code=verdict.refusal, headers={"Retry-After": str(retry)})


def _headers(ask: Ask, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit headers: the scope with the fewest requests (and tokens) left."""
    headers: list[tuple[bytes, bytes]] = []
    reset = _duration(verdict.reset_seconds)
    for kind, left, limit_of in (
        ("requests", verdict.requests_left, _requests_limit),
        ("tokens", verdict.tokens_left, _tokens_limit),
    ):
        tightest = min(((value, index) for index, value in enumerate(left) if value is not None), default=None)
        if tightest is None:
            continue
        value, index = tightest
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit_of(ask.scopes[index].limits)).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(value).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), reset),
        ]
    return headers


def _requests_limit(limits: KeyLimits) -> int | None:
    return limits.requests_per_minute


def _tokens_limit(limits: KeyLimits) -> int | None:
    return limits.tokens_per_minute


def _duration(seconds: float) -> bytes:
    """A time in OpenAI's header form: `6m0s`, `1.5s`, `20ms`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms".encode()
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return (f"{int(minutes)}m{text}" if minutes else text).encode()
