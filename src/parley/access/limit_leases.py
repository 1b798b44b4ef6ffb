"""Quota leases: an instance takes a block of a high limit from the shared counters at once and
grants requests from it itself, so a busy key's requests don't each make a Redis call.

A lease is an ordinary reservation (`Ask.requests` > 1, its tokens enough for that many requests
like the one that asked), so it is checked and taken atomically with everyone else's, and the
shared counters count it as used from the moment it is taken: no instance can overrun a limit or
a budget through a lease. What a lease doesn't grant is given back when its minute window ends.
Exactness near a limit is kept by leasing only far from it: the counters grant a lease only where
every limit it counts against (rates and budgets) has room for `LEASE_SHARE` times the lease
(`Ask.headroom`), and none is asked for below `MIN_LEASE_REQUESTS` requests, so a key allowed 10
requests a minute is still counted request by request, and a budget nearly spent is not held back
by a lease on one instance while another is refused.

Scopes with a concurrent-streams limit are never leased (their slots are per stream), nor scopes
limited only by budgets (answers don't say how much of a budget is left, to size a lease by). A lease the
counters refuse (a budget nearly spent) is not asked for again until its window ends; the request
that wanted it is reserved on its own, as it would have been.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from parley.access.limit_counters import Ask, Counters, LimitedScope, Verdict
from parley.ids import unique_hex

LEASE_SHARE = 32  # a lease takes at most 1/LEASE_SHARE of what is left
MIN_LEASE_REQUESTS = 8  # fewer than this would be left: each request is reserved on its own
MAX_LEASE_REQUESTS = 1024  # (what a lease may hold back from other instances until its window ends)
MAX_SCOPE_SETS = 10_000  # sets of scopes remembered; beyond, those without a lease are forgotten


@dataclass(slots=True)
class _Lease:
    """Requests and tokens taken for one set of scopes, in one minute window, granted from here."""

    ask: Ask  # the reservation that took it (its window, day and month are the lease's)
    verdict: Verdict
    requests: int  # left to grant
    tokens: int
    ends: float  # (monotonic) when its window ends: nothing is granted from it after
    granted: set[str] = field(default_factory=set)  # stream ids of requests granted and not yet settled
    expiry: asyncio.TimerHandle | None = None  # gives back what is left when the window ends

    def grant(self, ask: Ask, now: float) -> Verdict | None:
        if now >= self.ends or self.requests < 1 or self.tokens < ask.tokens:
            return None
        self.requests -= 1
        self.tokens -= ask.tokens
        self.granted.add(ask.stream_id)
        lease = self.verdict
        return replace(
            lease,
            reset_seconds=self.ends - now,
            # What the shared counters have left, and what is left here: both the key's to use.
            requests_left=tuple(None if left is None else left + self.requests for left in lease.requests_left),
            tokens_left=tuple(None if left is None else left + self.tokens for left in lease.tokens_left),
        )


@dataclass(slots=True)
class _Scopes:
    """What is known of one set of scopes: its lease, and whether one is worth asking for."""

    lease: _Lease | None = None
    leasing: asyncio.Future[None] | None = None  # a lease being taken: others wait for it
    requests_left: int | None = None  # in the last answer for these scopes (None: no such limit)
    tokens_left: int | None = None
    no_lease_until: float = 0.0  # (monotonic) after a refused lease, or before any answer


class LeasedCounters:
    """`Counters` that grant from leases where a limit is far from reached, and pass the rest on."""

    def __init__(self, shared: Counters) -> None:
        self._shared = shared
        self._scopes: dict[tuple[LimitedScope, ...], _Scopes] = {}
        self._leased: dict[str, _Lease] = {}  # stream id -> the lease it was granted from (until settled)
        self._returns: set[asyncio.Task[None]] = set()  # leases' unused parts being given back

    async def reserve(self, ask: Ask) -> Verdict:
        if any(scope.limits.max_streams is not None for scope in ask.scopes):
            return await self._shared.reserve(ask)
        known = self._scopes.get(ask.scopes)
        if known is None:
            if len(self._scopes) >= MAX_SCOPE_SETS:  # (keys come and go, and change their limits)
                self._scopes = {scopes: kept for scopes, kept in self._scopes.items() if kept.lease or kept.leasing}
            known = self._scopes[ask.scopes] = _Scopes()
        loop = asyncio.get_running_loop()
        while True:
            if known.lease is not None:
                verdict = known.lease.grant(ask, loop.time())
                if verdict is not None:
                    self._leased[ask.stream_id] = known.lease
                    return verdict
                self._end(known, known.lease)
            if known.leasing is not None:
                await asyncio.shield(known.leasing)
                continue
            size = self._lease_size(known, ask, loop.time())
            if size is None:
                break
            await self._take_lease(known, ask, *size)
            if known.lease is None:
                break
        verdict = await self._shared.reserve(ask)
        known.requests_left = _tightest(verdict.requests_left)
        known.tokens_left = _tightest(verdict.tokens_left)
        return verdict

    def _lease_size(self, known: _Scopes, ask: Ask, now: float) -> tuple[int, int] | None:
        """Requests and tokens to lease for these scopes now; None: reserve each request on its own."""
        if now < known.no_lease_until or (known.requests_left is None and known.tokens_left is None):
            return None
        # Half the most the counters would grant: room for what others took since the last answer.
        share = 2 * LEASE_SHARE
        requests = MAX_LEASE_REQUESTS if known.requests_left is None else known.requests_left // share
        if known.tokens_left is not None:
            requests = min(requests, known.tokens_left // share // max(ask.tokens, 1))
        requests = min(requests, MAX_LEASE_REQUESTS)
        if requests < MIN_LEASE_REQUESTS:
            return None
        return requests, requests * ask.tokens

    async def _take_lease(self, known: _Scopes, ask: Ask, requests: int, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        known.leasing = loop.create_future()
        try:
            lease_ask = replace(
                ask, tokens=tokens, requests=requests, headroom=LEASE_SHARE, stream_id=f"lease-{unique_hex()}"
            )
            verdict = await self._shared.reserve(lease_ask)
            now = loop.time()
            known.requests_left = _tightest(verdict.requests_left)
            known.tokens_left = _tightest(verdict.tokens_left)
            if verdict.refusal is not None:
                known.no_lease_until = now + verdict.reset_seconds
                return
            lease = _Lease(lease_ask, verdict, requests, tokens, now + verdict.reset_seconds)
            lease.expiry = loop.call_at(lease.ends, self._expire, known, lease)
            known.lease = lease
        finally:
            known.leasing.set_result(None)
            known.leasing = None

    def _expire(self, known: _Scopes, lease: _Lease) -> None:
        lease.expiry = None
        if known.lease is lease:
            self._end(known, lease)

    def _end(self, known: _Scopes, lease: _Lease) -> None:
        """Stop granting from `lease` and give back what it didn't grant."""
        known.lease = None
        if lease.expiry is not None:
            lease.expiry.cancel()
            lease.expiry = None
        for stream_id in lease.granted:
            self._leased.pop(stream_id, None)
        unused_requests, unused_tokens = lease.requests, lease.tokens
        lease.requests = lease.tokens = 0
        if unused_requests or unused_tokens:
            giving_back = self._shared.settle(
                lease.ask, lease.verdict.window, tokens_delta=-unused_tokens, requests_delta=-unused_requests
            )
            task = asyncio.get_running_loop().create_task(giving_back, name="parley-limits-lease-return")
            self._returns.add(task)
            task.add_done_callback(self._returns.discard)

    async def settle(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        lease = self._leased.pop(ask.stream_id, None)
        if lease is None:  # reserved on its own, or its lease has ended (and given back what it held)
            await self._shared.settle(ask, window, tokens_delta=tokens_delta, requests_delta=requests_delta)
            return
        lease.granted.discard(ask.stream_id)
        lease.requests -= requests_delta  # (a refund: -1 request; tokens used beyond the estimate: less left)
        lease.tokens -= tokens_delta

    async def aclose(self) -> None:
        for known in self._scopes.values():
            if known.lease is not None:
                self._end(known, known.lease)
        if self._returns:
            await asyncio.wait(self._returns)
        await self._shared.aclose()


def _tightest(values: tuple[int | None, ...]) -> int | None:
    known = [value for value in values if value is not None]
    return min(known) if known else None
