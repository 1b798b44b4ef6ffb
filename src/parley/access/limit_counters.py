"""The counters behind limits and budgets: what one reservation asks, what the counters answer,
and the in-process counters (one server; the Redis ones in `limit_redis` are their shared twin).

Rates (requests and tokens a minute) use a sliding window counter: the current minute's count
plus the previous minute's, weighted by how much of it still lies within the last sixty seconds
(the `limits` package's "sliding window counter"). Budgets count per UTC day and calendar month.
A reservation is checked against every limit of every scope first, and taken from all of them
only if all allow it; it is settled against the real usage later (`settle`), or refunded whole.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from limits import RateLimitItemPerMinute

from parley.access.principal import KeyLimits

# The window both rates are counted in, from the `limits` package's own item (60 seconds).
WINDOW_SECONDS = RateLimitItemPerMinute(1).get_expiry()

Refusal = Literal[
    "rate_limit_requests", "rate_limit_tokens", "too_many_streams", "daily_budget_exceeded", "monthly_budget_exceeded"
]
REFUSALS: tuple[Refusal, ...] = (
    "rate_limit_requests",
    "rate_limit_tokens",
    "too_many_streams",
    "daily_budget_exceeded",
    "monthly_budget_exceeded",
)
NEVER = -1.0  # the retry of a request larger than the limit itself: waiting won't help


@dataclass(frozen=True, slots=True)
class LimitedScope:
    name: str  # "key:<key id>" or "model:<model name>"
    limits: KeyLimits


@dataclass(frozen=True, slots=True)
class Ask:
    """One generation's reservation: a request, `tokens` tokens and a stream slot, in every scope."""

    scopes: tuple[LimitedScope, ...]
    tokens: int
    stream_id: str
    day: str  # the UTC day ("2026-12-01") and month ("2026-12") its budgets count in
    month: str
    until_next_day: float  # seconds
    until_next_month: float
    requests: int = 1  # (more for a lease: requests an instance takes at once, to grant them itself)
    # Granted only where a limit has room for this many times the ask (a lease: only far from a limit).
    headroom: int = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    refusal: Refusal | None  # None: granted (and reserved)
    scope: int  # the index of the scope that refused
    retry_after: float  # seconds; NEVER for a request larger than the limit
    window: int  # the minute window the reservation was counted in
    reset_seconds: float  # until the current minute window ends
    # Per scope: requests and tokens left this minute (after this reservation if granted); None: no such limit.
    requests_left: tuple[int | None, ...]
    tokens_left: tuple[int | None, ...]


class Counters(Protocol):
    async def reserve(self, ask: Ask) -> Verdict: ...

    async def settle(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        """Correct a granted reservation by the deltas (tokens used minus reserved; -1 request to
        refund it), and free its stream slot."""

    async def aclose(self) -> None: ...


def budget_periods(now: float) -> tuple[str, str, float, float]:
    """The UTC day and month of `now`, and the seconds until each ends."""
    moment = time.gmtime(now)
    day = f"{moment.tm_year:04d}-{moment.tm_mon:02d}-{moment.tm_mday:02d}"
    next_day = calendar.timegm((moment.tm_year, moment.tm_mon, moment.tm_mday, 0, 0, 0)) + 86400
    year, month = (moment.tm_year + 1, 1) if moment.tm_mon == 12 else (moment.tm_year, moment.tm_mon + 1)
    next_month = calendar.timegm((year, month, 1, 0, 0, 0))
    return day, day[:7], next_day - now, next_month - now


def wait_for(previous: float, current: float, limit: int, cost: int, elapsed: float) -> float:
    """Seconds until `cost` more fits under `limit` in a sliding window (`elapsed`: the fraction of
    the current window gone); the Lua script in `limit_redis` computes the same."""
    if cost > limit:
        return NEVER
    if current + cost <= limit and previous > 0:  # the previous window's share decays enough in this one
        fraction = 1 - (limit - current - cost) / previous
        return max(0.0, fraction - elapsed) * WINDOW_SECONDS
    share = max(0.0, 1 - (limit - cost) / current) if current > 0 else 0.0  # into the next window
    return ((1 - elapsed) + share) * WINDOW_SECONDS


class LocalCounters:
    """The same counters in this process: exact for one server. No locks: everything here runs on
    the event loop, between two awaits."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: dict[int, dict[str, int]] = {}  # window -> "req:<scope>" / "tok:<scope>" -> count
        self._budgets: dict[str, int] = {}  # "day:<scope>:<day>" / "month:<scope>:<month>" -> tokens
        self._budget_labels = ("", "")
        self._streams: dict[str, int] = {}  # scope -> generations running

    async def reserve(self, ask: Ask) -> Verdict:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        elapsed = (now - window * WINDOW_SECONDS) / WINDOW_SECONDS
        current, previous = self._windows(window), self._minutes.get(window - 1, {})
        if self._budget_labels != (ask.day, ask.month):  # a new day: yesterday's counts go
            self._budget_labels = (ask.day, ask.month)
            self._budgets = {k: v for k, v in self._budgets.items() if k.endswith((f":{ask.day}", f":{ask.month}"))}
        refusal: tuple[Refusal, int, float] | None = None
        requests_left: list[int | None] = []
        tokens_left: list[int | None] = []
        for index, scope in enumerate(ask.scopes):
            limits, name = scope.limits, scope.name
            rates: tuple[tuple[str, int | None, int, list[int | None], Refusal], ...] = (
                ("req", limits.requests_per_minute, ask.requests, requests_left, "rate_limit_requests"),
                ("tok", limits.tokens_per_minute, ask.tokens, tokens_left, "rate_limit_tokens"),
            )
            for kind, limit, cost, left, code in rates:
                if limit is None:
                    left.append(None)
                    continue
                before, now_count = previous.get(f"{kind}:{name}", 0), current.get(f"{kind}:{name}", 0)
                used = before * (1 - elapsed) + now_count
                left.append(max(0, math.floor(limit - used)))
                if refusal is None and used + cost * ask.headroom > limit:
                    refusal = (code, index, wait_for(before, now_count, limit, cost, elapsed))
            if refusal is None and limits.max_streams is not None and self._streams.get(name, 0) >= limits.max_streams:
                refusal = ("too_many_streams", index, 1.0)
            budgets: tuple[tuple[str, int | None, str, float, Refusal], ...] = (
                ("day", limits.daily_tokens, ask.day, ask.until_next_day, "daily_budget_exceeded"),
                ("month", limits.monthly_tokens, ask.month, ask.until_next_month, "monthly_budget_exceeded"),
            )
            for kind, budget, label, until, code in budgets:
                spent = self._budgets.get(f"{kind}:{name}:{label}", 0)
                if refusal is None and budget is not None and spent + ask.tokens * ask.headroom > budget:
                    refusal = (code, index, NEVER if ask.tokens > budget else until)
        reset = (1 - elapsed) * WINDOW_SECONDS
        if refusal is not None:
            code, index, retry = refusal
            return Verdict(code, index, retry, window, reset, tuple(requests_left), tuple(tokens_left))
        for scope in ask.scopes:
            self._take(scope, ask, current)
        return Verdict(
            None,
            -1,
            0.0,
            window,
            reset,
            tuple(None if left is None else max(0, left - ask.requests) for left in requests_left),
            tuple(None if left is None else max(0, left - ask.tokens) for left in tokens_left),
        )

    def _take(self, scope: LimitedScope, ask: Ask, current: dict[str, int]) -> None:
        limits, name = scope.limits, scope.name
        if limits.requests_per_minute is not None:
            current[f"req:{name}"] = current.get(f"req:{name}", 0) + ask.requests
        if limits.tokens_per_minute is not None:
            current[f"tok:{name}"] = current.get(f"tok:{name}", 0) + ask.tokens
        if limits.max_streams is not None:
            self._streams[name] = self._streams.get(name, 0) + 1
        if limits.daily_tokens is not None:
            self._add_budget(f"day:{name}:{ask.day}", ask.tokens)
        if limits.monthly_tokens is not None:
            self._add_budget(f"month:{name}:{ask.month}", ask.tokens)

    def _windows(self, window: int) -> dict[str, int]:
        current = self._minutes.get(window)
        if current is None:  # a new minute: only the previous one is still needed
            self._minutes = {w: counts for w, counts in self._minutes.items() if w == window - 1}
            current = self._minutes[window] = {}
        return current

    def _add_budget(self, key: str, tokens: int) -> None:
        self._budgets[key] = self._budgets.get(key, 0) + tokens

    async def settle(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        counts = self._minutes.get(window)
        for scope in ask.scopes:
            limits, name = scope.limits, scope.name
            if counts is not None:
                if limits.requests_per_minute is not None and f"req:{name}" in counts:
                    counts[f"req:{name}"] += requests_delta
                if limits.tokens_per_minute is not None and f"tok:{name}" in counts:
                    counts[f"tok:{name}"] += tokens_delta
            if limits.max_streams is not None:
                self._streams[name] = max(0, self._streams.get(name, 0) - 1)
            for key, budget in (
                (f"day:{name}:{ask.day}", limits.daily_tokens),
                (f"month:{name}:{ask.month}", limits.monthly_tokens),
            ):
                if budget is not None and key in self._budgets:
                    self._budgets[key] += tokens_delta

    async def aclose(self) -> None:
        return None
