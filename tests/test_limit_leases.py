"""Quota leases against real Redis, on the real chat path (ChatService, the fake model, real runs):
a key far from its limits is counted a block at a time, and nothing a lease holds lets any
instance go past a limit. Each "instance" is a gate with a Redis client of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from parley.access.limit_leases import LeasedCounters
from parley.access.limit_redis import RedisCounters
from parley.access.limits import LimitGate
from parley.access.ratelimit_headers import collect_rate_limit_headers
from parley.chat.run import Run
from parley.chat.service import ChatService
from parley.config import FakeConfig
from parley.errors import RateLimited
from parley.models.base import estimate_tokens
from parley.models.registry import ModelRegistry, ModelState
from tests.support.redis import REDIS_URL, connected, redis_prefix
from tests.test_limits import CountingRedis, RefuseEverything, finish, key, outcome, request


@asynccontextmanager
async def leased_instances(prefix: str, count: int) -> AsyncIterator[list[tuple[ChatService, CountingRedis]]]:
    """`count` chat services, each with its own leased counters on its own counting Redis client."""
    await (await connected()).aclose()  # (skips, or fails under PARLEY_REQUIRE_SERVICES, without Redis)
    made: list[tuple[ChatService, CountingRedis]] = []
    gates: list[LimitGate] = []
    for _ in range(count):
        client = CountingRedis.from_url(REDIS_URL)
        assert isinstance(client, CountingRedis)
        gate = LimitGate(LeasedCounters(RedisCounters(client, prefix)), {}, reserve_tokens=10)
        gates.append(gate)
        registry = ModelRegistry([FakeConfig(name="echo", provider="fake")])
        registry.entries()[0].state = ModelState.READY
        made.append((ChatService(registry, [], gates=[gate]), client))
    try:
        yield made
    finally:
        for gate in gates:
            await gate.aclose()


async def clear_of_a_minute_boundary(seconds: float) -> None:
    """Wait, if need be, until a minute window has `seconds` left: counts that must be exact are
    taken within one window (the previous one's weight fades in the next)."""
    into = time.time() % 60
    if into > 60 - seconds:
        await asyncio.sleep(60 - into + 0.2)  # (the next window's start: a wait for the clock, not for work)


async def requests_this_minute(prefix: str, scope: str) -> int:
    """The requests Redis counts for `scope` in the current minute window."""
    client = Redis.from_url(REDIS_URL)
    try:
        windows = [key async for key in client.scan_iter(match=f"{prefix}req:{scope}:*")]
        newest = max(windows, key=lambda name: int(name.rsplit(b":", 1)[1]))
        return int(await client.get(newest) or 0)
    finally:
        await client.aclose()


async def test_a_key_far_from_its_limits_is_counted_a_lease_at_a_time() -> None:
    await clear_of_a_minute_boundary(10)
    async with redis_prefix() as prefix:
        async with leased_instances(prefix, 1) as [(service, client)]:
            caller = key("k-busy", requests_per_minute=100_000, tokens_per_minute=10**9)
            remaining: list[int] = []
            for _ in range(200):
                headers = collect_rate_limit_headers()
                run = await service.start(request(), principal=caller)
                await finish(run)
                remaining.append(int(dict(headers)[b"x-ratelimit-remaining-requests"]))
            # One call for the first request (it learns how much is left), then a lease (of 1,024
            # requests, the most a lease holds): 200 requests in two calls, where each used to make one.
            assert client.script_calls <= 3
            # The headers still count every request: what Redis has left plus what the lease holds.
            assert remaining == list(range(99_999, 99_999 - 200, -1))
            # Redis counts the whole lease as used, granted or not: no other instance can take it.
            assert await requests_this_minute(prefix, "key:k-busy") == 1 + 1_024
            # A burst at once: granted from the lease, no call.
            burst = await asyncio.gather(*(service.start(request(), principal=caller) for _ in range(100)))
            assert client.script_calls <= 3
            for run in burst:
                await finish(run)
        # Closed, the instance gave back what its lease didn't grant: Redis counts the 300 requests made.
        assert await requests_this_minute(prefix, "key:k-busy") == 300


async def test_instances_holding_leases_together_get_exactly_the_limit() -> None:
    await clear_of_a_minute_boundary(40)
    async with redis_prefix() as prefix, leased_instances(prefix, 2) as servers:
        # Leases of 31 requests and fewer while 512 or more are left, then request by request.
        caller = key("k-shared", requests_per_minute=2_000)
        granted: list[Run] = []
        refused = 0
        held = 0  # the most Redis counted beyond the requests granted: what leases held meanwhile
        for _ in range(23):  # rounds of 50 requests at once on each instance
            results = await asyncio.gather(*(outcome(servers[i % 2][0], caller) for i in range(100)))
            round_runs = [result for result in results if isinstance(result, Run)]
            refused += len(results) - len(round_runs)
            for run in round_runs:
                await finish(run)
            granted += round_runs
            held = max(held, await requests_this_minute(prefix, "key:k-shared") - len(granted))
        assert held > 0  # leases took part
        assert len(granted) == 2_000 and refused == 300


async def test_a_budget_near_its_end_is_never_held_in_a_lease_nor_overrun() -> None:
    async with redis_prefix() as prefix, leased_instances(prefix, 2) as servers:
        caller = key("k-burst", requests_per_minute=50_000, tokens_per_minute=10**8, daily_tokens=20_000)
        first = await outcome(servers[0][0], caller)
        assert isinstance(first, Run)
        await finish(first)
        results = await asyncio.gather(*(outcome(servers[i % 2][0], caller) for i in range(1_400)))
        granted = [result for result in results if isinstance(result, Run)]
        refusals = {result.code for result in results if isinstance(result, RateLimited)}
        # A lease must leave the budget room for 32 more like it: a budget this near its end is
        # granted request by request, all of it and no more, whichever instance asks.
        cost = estimate_tokens("hello") + 4 + 10  # the prompt's estimate and reserve_tokens
        assert refusals == {"daily_budget_exceeded"}
        assert len(granted) + 1 == 20_000 // cost
        for run in granted:
            await finish(run)


async def test_a_request_that_never_begins_gives_its_request_back_to_the_lease() -> None:
    async with redis_prefix() as prefix:
        await (await connected()).aclose()
        client = CountingRedis.from_url(REDIS_URL)
        assert isinstance(client, CountingRedis)
        gate = LimitGate(LeasedCounters(RedisCounters(client, prefix)), {}, reserve_tokens=10)
        registry = ModelRegistry([FakeConfig(name="echo", provider="fake")])
        registry.entries()[0].state = ModelState.READY
        service = ChatService(registry, [], gates=[gate])
        refusing = ChatService(registry, [], gates=[gate, RefuseEverything()])  # same counters, a later gate
        caller = key("k-refund", requests_per_minute=10_000)
        try:
            for _ in range(3):
                await finish(await service.start(request(), principal=caller))
            calls = client.script_calls
            headers = collect_rate_limit_headers()
            await finish(await service.start(request(), principal=caller))
            before = int(dict(headers)[b"x-ratelimit-remaining-requests"])
            for _ in range(5):  # admitted from the lease, refused later: each request goes back to it
                refused = await outcome(refusing, caller)
                assert isinstance(refused, RateLimited) and refused.code == "later_gate"
            await finish(await service.start(request(), principal=caller))
            assert int(dict(headers)[b"x-ratelimit-remaining-requests"]) == before - 1
            assert client.script_calls == calls  # all from the lease, refunds included
        finally:
            await gate.aclose()
