"""The limits gate on the real chat path (ChatService, the fake model, real runs), with its counters
in this process or in real Redis. With Redis, each "instance" is a gate of its own with a client of
its own, as separate servers have: what they allow together is what one would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from parley.access.limit_counters import Counters, LocalCounters
from parley.access.limit_leases import LeasedCounters
from parley.access.limit_redis import RedisCounters
from parley.access.limits import LimitGate
from parley.access.principal import KeyLimits, Principal
from parley.chat.admission import Gate
from parley.chat.run import Run
from parley.chat.service import ChatService
from parley.config import FakeConfig, ModelConfig, ModelLimits
from parley.errors import RateLimited
from parley.models.base import ChatMessage, ChatRequest, GenerationParams
from parley.models.registry import ModelRegistry, ModelState
from tests.support.redis import REDIS_URL, connected, redis_prefix

BACKENDS = ("in-process", "redis", "redis-leased")
Instances = Callable[..., Awaitable[list[ChatService]]]


def key(name: str, **limits: int) -> Principal:
    return Principal(key_id=name, alias=name, limits=KeyLimits(**limits))


def request(text: str = "hello", max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest([ChatMessage(role="user", content=text)], GenerationParams(max_tokens=max_tokens))


@pytest.fixture(params=BACKENDS)
async def instances(request: pytest.FixtureRequest) -> AsyncIterator[Instances]:
    """`await instances(n, models=...)`: n chat services (servers) sharing one set of counters."""
    gates: list[LimitGate] = []
    async with redis_prefix() as prefix:

        async def make(
            count: int = 1,
            *,
            models: dict[str, ModelLimits] | None = None,
            lease: float = 30.0,
            extra_gates: Sequence[Gate] = (),
        ) -> list[ChatService]:
            configs: list[ModelConfig] = [
                FakeConfig(name=name, provider="fake", limits=(models or {}).get(name)) for name in ("echo", "other")
            ]
            limits = {name: KeyLimits(**value.model_dump()) for name, value in (models or {}).items()}
            local = LocalCounters()
            services = []
            for _ in range(count):
                counters: Counters = local
                if request.param != "in-process":
                    counters = RedisCounters(await connected(REDIS_URL), prefix, lease_seconds=lease)
                if request.param == "redis-leased":  # as servers run: leases where a limit is far off
                    counters = LeasedCounters(counters)
                gate = LimitGate(counters, limits, reserve_tokens=1000)
                gates.append(gate)
                registry = ModelRegistry(configs)
                for entry in registry.entries():
                    entry.state = ModelState.READY
                services.append(ChatService(registry, [], gates=[gate, *extra_gates]))
            return services

        try:
            yield make
        finally:
            for gate in gates:
                await gate.aclose()


async def outcome(service: ChatService, principal: Principal, **kwargs: object) -> Run | RateLimited:
    body = kwargs.pop("body", None) or request()
    try:
        return await service.start(body, principal=principal, **kwargs)  # type: ignore[arg-type]
    except RateLimited as refusal:
        return refusal


async def finish(run: Run) -> None:
    await run.collect()
    await run.aclose()


async def test_a_key_limited_to_10_requests_a_minute_gets_exactly_10_of_30(instances: Instances) -> None:
    servers = await instances(3)
    caller = key("k-rpm", requests_per_minute=10)
    results = await asyncio.gather(*(outcome(servers[i % 3], caller) for i in range(30)))
    runs = [r for r in results if isinstance(r, Run)]
    refusals = [r for r in results if isinstance(r, RateLimited)]
    assert len(runs) == 10 and len(refusals) == 20
    for run in runs:
        await finish(run)
    refusal = refusals[0]
    assert refusal.status_code == 429 and refusal.code == "rate_limit_requests"
    assert 1 <= int(refusal.headers["Retry-After"]) <= 120
    assert "requests per minute" in refusal.message
    assert isinstance(await outcome(servers[0], key("k-other", requests_per_minute=10)), Run)  # keys apart


async def test_concurrent_requests_cannot_overrun_a_token_budget(instances: Instances) -> None:
    servers = await instances(2)
    # Each request reserves its prompt (2 + 4 tokens estimated) and its max_tokens (42): 48.
    caller = key("k-budget", daily_tokens=320)
    results = await asyncio.gather(
        *(outcome(servers[i % 2], caller, body=request("just say", max_tokens=42)) for i in range(24))
    )
    runs = [r for r in results if isinstance(r, Run)]
    assert len(runs) == 6  # 6 x 48 = 288 <= 320 < 7 x 48, however the requests interleaved
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert {r.code for r in refused} == {"daily_budget_exceeded"}
    assert int(refused[0].headers["Retry-After"]) <= 86400
    # The short replies use far less than their reservations: settled, the budget has room again.
    for run in runs:
        await finish(run)
        assert run.usage is not None and run.usage.prompt_tokens + run.usage.completion_tokens < 10
    later = await asyncio.gather(
        *(outcome(servers[i % 2], caller, body=request("just say", max_tokens=42)) for i in range(3))
    )
    for result in later:
        assert isinstance(result, Run)
        await finish(result)


async def test_tokens_per_minute_reserve_max_tokens_and_refuse_a_request_larger_than_the_limit(
    instances: Instances,
) -> None:
    (server,) = await instances(1)
    caller = key("k-tpm", tokens_per_minute=100)
    first = await outcome(server, caller, body=request("hi", max_tokens=60))  # 6 + 60 reserved
    second = await outcome(server, caller, body=request("hi", max_tokens=60))
    assert isinstance(first, Run)
    assert isinstance(second, RateLimited) and second.code == "rate_limit_tokens"
    await finish(first)  # settled at its real use (a few tokens): room again
    third = await outcome(server, caller, body=request("hi", max_tokens=60))
    assert isinstance(third, Run)
    await finish(third)
    too_large = await outcome(server, caller, body=request("hi", max_tokens=500))
    assert isinstance(too_large, RateLimited) and too_large.code == "rate_limit_tokens"
    assert "lower max_tokens" in too_large.message


async def test_concurrent_streams_are_limited_across_instances_and_freed_when_a_reply_ends(
    instances: Instances,
) -> None:
    servers = await instances(2, models={"echo": ModelLimits(max_streams=2)})
    anyone = Principal()
    first = await outcome(servers[0], anyone, model="echo")
    second = await outcome(servers[1], anyone, model="echo")
    third = await outcome(servers[0], anyone, model="echo")
    assert isinstance(first, Run) and isinstance(second, Run)
    assert isinstance(third, RateLimited) and third.code == "too_many_streams"
    assert "this model's limit of replies at once" in third.message
    assert isinstance(await outcome(servers[1], anyone, model="other"), Run)  # another model: no limit
    await finish(first)
    # Another instance sees the slot free within moments (a settlement waits up to 50 ms to ride
    # along with its own instance's next reservation), this instance at once.
    fourth = await admitted_within(2.0, servers[1], anyone, model="echo")
    await finish(second)
    fifth = await outcome(servers[1], anyone, model="echo")
    assert isinstance(fifth, Run)
    await finish(fourth)
    await finish(fifth)


async def admitted_within(seconds: float, service: ChatService, principal: Principal, **kwargs: object) -> Run:
    deadline = asyncio.get_running_loop().time() + seconds
    while isinstance(result := await outcome(service, principal, **kwargs), RateLimited):
        assert asyncio.get_running_loop().time() < deadline, f"still refused after {seconds} s: {result.message}"
        await asyncio.sleep(0.01)  # (polling another instance's state: a real wait, nothing faked)
    return result


async def test_a_refusal_by_one_scope_takes_nothing_from_the_others(instances: Instances) -> None:
    (server,) = await instances(1, models={"echo": ModelLimits(requests_per_minute=2)})
    caller = key("k-both", requests_per_minute=3)
    for _ in range(2):
        assert isinstance(await outcome(server, caller, model="echo"), Run)
    refused = await outcome(server, caller, model="echo")
    assert isinstance(refused, RateLimited) and "this model's" in refused.message
    # The model refused the third: the key's count holds two of its three, so one more passes.
    assert isinstance(await outcome(server, caller, model="other"), Run)
    refused_by_key = await outcome(server, caller, model="other")
    assert isinstance(refused_by_key, RateLimited) and "this key's" in refused_by_key.message


class RefuseEverything:
    """A later gate that refuses (as a budget elsewhere or a failed store write would)."""

    async def admit(self, principal: Principal, entry: object, request: object) -> None:
        raise RateLimited("refused by a later gate", code="later_gate")


async def test_a_generation_that_never_begins_gives_its_reservation_back(instances: Instances) -> None:
    (refusing,) = await instances(1, extra_gates=[RefuseEverything()])
    caller = key("k-release", requests_per_minute=1, max_streams=1, daily_tokens=1100)
    for _ in range(3):  # each time released: the one request, stream and budget stay free
        refused = await outcome(refusing, caller)
        assert isinstance(refused, RateLimited) and refused.code == "later_gate"


async def test_a_crashed_instances_stream_slots_free_themselves_and_live_ones_are_renewed() -> None:
    async with redis_prefix() as prefix:
        limits = {"echo": KeyLimits(max_streams=1)}
        registry = ModelRegistry([FakeConfig(name="echo", provider="fake")])
        registry.entries()[0].state = ModelState.READY
        live = LimitGate(RedisCounters(await connected(), prefix, lease_seconds=0.6), limits, reserve_tokens=10)
        other = LimitGate(RedisCounters(await connected(), prefix, lease_seconds=0.6), limits, reserve_tokens=10)
        try:
            holding = await ChatService(registry, [], gates=[live]).start(request())  # (never ended)
            assert holding.outcome is None
            service = ChatService(registry, [], gates=[other])
            # Well past its lease, the running reply still holds its slot: its instance renews it.
            await asyncio.sleep(1.5)
            with pytest.raises(RateLimited):
                await service.start(request())
            await live.aclose()  # the instance dies without ending its reply: no renewals, no settle
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                try:
                    run = await service.start(request())
                    break
                except RateLimited:
                    assert asyncio.get_running_loop().time() < deadline, "a dead instance's slot never freed"
                    await asyncio.sleep(0.1)
            await finish(run)
        finally:
            await other.aclose()


class CountingRedis(Redis):
    """A real client that counts the script calls it makes."""

    script_calls = 0

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        self.script_calls += 1
        return await super().evalsha(*args, **kwargs)


async def test_one_instances_concurrent_requests_share_redis_calls_and_still_get_exactly_their_limit() -> None:
    async with redis_prefix() as prefix:
        registry = ModelRegistry([FakeConfig(name="echo", provider="fake")])
        registry.entries()[0].state = ModelState.READY
        client = CountingRedis.from_url(REDIS_URL)
        assert isinstance(client, CountingRedis)
        gate = LimitGate(RedisCounters(client, prefix), {}, reserve_tokens=10)
        service = ChatService(registry, [], gates=[gate])
        try:
            caller = key("k-burst", requests_per_minute=25, tokens_per_minute=100_000)
            results = await asyncio.gather(*(outcome(service, caller) for _ in range(60)))
            assert sum(isinstance(result, Run) for result in results) == 25
            refused = [result for result in results if isinstance(result, RateLimited)]
            assert len(refused) == 35 and {error.code for error in refused} == {"rate_limit_requests"}
            # 60 reservations in far fewer calls: those asked while a call was under way went together.
            assert client.script_calls < 10
            for result in results:
                if isinstance(result, Run):
                    await finish(result)
        finally:
            await gate.aclose()


async def test_a_request_cancelled_while_its_limits_are_checked_gives_back_what_it_took() -> None:
    async with redis_prefix() as prefix:
        registry = ModelRegistry([FakeConfig(name="echo", provider="fake")])
        registry.entries()[0].state = ModelState.READY
        gate = LimitGate(RedisCounters(await connected(), prefix), {}, reserve_tokens=10)
        service = ChatService(registry, [], gates=[gate])
        caller = key("k-cancelled", requests_per_minute=1, max_streams=1)
        try:
            cancelled = asyncio.create_task(service.start(request(), principal=caller))
            await asyncio.sleep(0)  # its reservation is asked; the answer hasn't come
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            # Its one request a minute and its one stream were given back: the next request gets them.
            result = await outcome(service, caller)
            assert isinstance(result, Run)
            await finish(result)
        finally:
            await gate.aclose()
