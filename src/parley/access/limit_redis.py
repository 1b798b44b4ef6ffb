"""Limits shared by every instance through Redis: one Lua script checks every limit of every
scope and, only if all allow it, reserves from all of them, atomically (Redis runs a script
alone). The `limits` package's strategies each check and take one limit per call and have no
way to give back part of a hit, so a reservation across several limits, settled later against
the real usage, is this module's own; its arithmetic is the same sliding window counter.

Time is Redis's own clock (TIME), so instances with skewed clocks still share one window.
Keys expire by themselves: a minute's counters after two minutes, budgets a day after their
period. Stream slots are a sorted set per scope of stream ids scored by when their lease ends:
a running stream's lease is renewed by its instance every third of a lease, so the slots of an
instance that crashed free themselves within one lease (a plain counter with a TTL could not
tell a dead instance's streams from live ones).

Reservations asked while a call is under way go together in the next one, each checked and
taken in turn inside the one script, and settlements ride along with them (see RedisCounters):
a busy instance makes one Redis call for many requests, and an idle one no call that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.access.limit_counters import NEVER, REFUSALS, Ask, Verdict
from parley.errors import LimitsUnavailable

log = logging.getLogger("parley.access.limits")

STREAM_LEASE_SECONDS = 30.0
# How long a settlement waits to go with a reservation: other instances see a refund this much later.
SETTLE_DELAY_SECONDS = 0.05
MAX_ASKS_PER_CALL = 64  # reservations in one script call (Redis runs nothing else meanwhile)

# Settlements: ARGV from `at`: a count, then each settlement's window, day, month, tokens delta,
# requests delta, stream id, scope count, and six per scope (as the reservation's). Counters that
# have expired meanwhile are left alone (not recreated without an expiry).
_SETTLE_ALL = """
local function adjust(key, delta)
  if delta ~= 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, delta) end
end
local function settle_all(prefix, at)
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    local window, day, month = ARGV[at], ARGV[at + 1], ARGV[at + 2]
    local tokens, requests, stream = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]), ARGV[at + 5]
    local scopes = tonumber(ARGV[at + 6])
    at = at + 7
    for _ = 1, scopes do
      local name = ARGV[at]
      if tonumber(ARGV[at + 1]) > 0 then adjust(prefix .. 'req:' .. name .. ':' .. window, requests) end
      if tonumber(ARGV[at + 2]) > 0 then adjust(prefix .. 'tok:' .. name .. ':' .. window, tokens) end
      if tonumber(ARGV[at + 3]) > 0 then redis.call('ZREM', prefix .. 'streams:' .. name, stream) end
      if tonumber(ARGV[at + 4]) > 0 then adjust(prefix .. 'day:' .. name .. ':' .. day, tokens) end
      if tonumber(ARGV[at + 5]) > 0 then adjust(prefix .. 'month:' .. name .. ':' .. month, tokens) end
      at = at + 6
    end
  end
  return at
end
"""

# KEYS: none (the keys depend on Redis's clock, read inside). ARGV: prefix; this instance's
# settlements not yet sent (applied first); the number of asks, then each ask's tokens, stream id,
# lease, day, seconds until the next day, month, seconds until the next month, requests (1, or a
# quota lease's), headroom (granted only if each limit has room for that many times the ask), scope
# count, and
# six per scope: name, requests/minute, tokens/minute, streams, daily tokens, monthly tokens (0: no
# such limit). Asks are checked and taken one after another, as separate calls would be.
# Returns, per ask: {refusal (0: granted), scope, retry ms, window, reset ms, then per scope:
# requests left, tokens left (-1: no such limit)}.
_RESERVE = (
    _SETTLE_ALL
    + """
local prefix = ARGV[1]
local at = settle_all(prefix, 2)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = math.floor(now / 60)
local elapsed = (now - window * 60) / 60
local reset = math.floor((1 - elapsed) * 60000)
local function count(key) return tonumber(redis.call('GET', key) or '0') end
local function wait_for(previous, current, limit, need)
  if need > limit then return -1 end
  if current + need <= limit and previous > 0 then
    return math.max(0, 1 - (limit - current - need) / previous - elapsed) * 60
  end
  local share = 0
  if current > 0 then share = math.max(0, 1 - (limit - need) / current) end
  return (1 - elapsed + share) * 60
end
local function reserve(first)
  local cost, stream, lease = tonumber(ARGV[first]), ARGV[first + 1], tonumber(ARGV[first + 2])
  local day, day_left = ARGV[first + 3], tonumber(ARGV[first + 4])
  local month, month_left = ARGV[first + 5], tonumber(ARGV[first + 6])
  local requests, headroom = tonumber(ARGV[first + 7]), tonumber(ARGV[first + 8])
  local scopes = tonumber(ARGV[first + 9])
  first = first + 10
  local refusal, left = nil, {}
  for i = 0, scopes - 1 do
    local at = first + i * 6
    local name = ARGV[at]
    local rates = {{'req:', tonumber(ARGV[at + 1]), requests, 1}, {'tok:', tonumber(ARGV[at + 2]), cost, 2}}
    for _, rate in ipairs(rates) do
      local limit = rate[2]
      if limit > 0 then
        local previous = count(prefix .. rate[1] .. name .. ':' .. (window - 1))
        local current = count(prefix .. rate[1] .. name .. ':' .. window)
        local used = previous * (1 - elapsed) + current
        table.insert(left, math.max(0, math.floor(limit - used)))
        if not refusal and used + rate[3] * headroom > limit then
          refusal = {rate[4], i, wait_for(previous, current, limit, rate[3])}
        end
      else
        table.insert(left, -1)
      end
    end
    local streams = tonumber(ARGV[at + 3])
    if streams > 0 then
      local key = prefix .. 'streams:' .. name
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      if not refusal and redis.call('ZCARD', key) >= streams then refusal = {3, i, 1} end
    end
    local budgets = {
      {'day:', tonumber(ARGV[at + 4]), day, day_left, 4},
      {'month:', tonumber(ARGV[at + 5]), month, month_left, 5},
    }
    for _, budget in ipairs(budgets) do
      local limit = budget[2]
      local spent = count(prefix .. budget[1] .. name .. ':' .. budget[3])
      if not refusal and limit > 0 and spent + cost * headroom > limit then
        if cost > budget[2] then refusal = {budget[5], i, -1} else refusal = {budget[5], i, budget[4]} end
      end
    end
  end
  local next_ask = first + scopes * 6
  if refusal then
    return {refusal[1], refusal[2], math.floor(refusal[3] * 1000), window, reset, unpack(left)}, next_ask
  end
  for i = 0, scopes - 1 do
    local at = first + i * 6
    local name = ARGV[at]
    if tonumber(ARGV[at + 1]) > 0 then
      local key = prefix .. 'req:' .. name .. ':' .. window
      redis.call('INCRBY', key, requests)
      redis.call('EXPIRE', key, 120)
      left[2 * i + 1] = math.max(0, left[2 * i + 1] - requests)
    end
    if tonumber(ARGV[at + 2]) > 0 then
      local key = prefix .. 'tok:' .. name .. ':' .. window
      redis.call('INCRBY', key, cost)
      redis.call('EXPIRE', key, 120)
      left[2 * i + 2] = math.max(0, left[2 * i + 2] - cost)
    end
    if tonumber(ARGV[at + 3]) > 0 then
      local key = prefix .. 'streams:' .. name
      redis.call('ZADD', key, now + lease, stream)
      redis.call('EXPIRE', key, math.ceil(lease * 2))
    end
    if tonumber(ARGV[at + 4]) > 0 then
      local key = prefix .. 'day:' .. name .. ':' .. day
      redis.call('INCRBY', key, cost)
      redis.call('EXPIRE', key, math.ceil(day_left) + 86400)
    end
    if tonumber(ARGV[at + 5]) > 0 then
      local key = prefix .. 'month:' .. name .. ':' .. month
      redis.call('INCRBY', key, cost)
      redis.call('EXPIRE', key, math.ceil(month_left) + 86400)
    end
  end
  return {0, -1, 0, window, reset, unpack(left)}, next_ask
end
local verdicts = {}
local asks = tonumber(ARGV[at])
at = at + 1
for n = 1, asks do
  verdicts[n], at = reserve(at)
end
return verdicts
"""
)

# ARGV: prefix, then settlements as above.
_SETTLE = (
    _SETTLE_ALL
    + """
settle_all(ARGV[1], 2)
return 0
"""
)

# ARGV: prefix, lease, then pairs of scope name and stream id: running streams' leases renewed.
_RENEW = """
local clock = redis.call('TIME')
local until_ = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[2])
for at = 3, #ARGV, 2 do
  local key = ARGV[1] .. 'streams:' .. ARGV[at]
  redis.call('ZADD', key, 'XX', until_, ARGV[at + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[2]) * 2))
end
return 0
"""


def _scope_args(ask: Ask) -> list[Any]:
    args: list[Any] = []
    for scope in ask.scopes:
        limits = scope.limits
        args += [
            scope.name,
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            limits.max_streams or 0,
            limits.daily_tokens or 0,
            limits.monthly_tokens or 0,
        ]
    return args


class RedisCounters:
    """The counters in Redis. Reservations asked while a call is under way wait for it and go
    together in the next call (at most `max_asks`), so calls follow the load's concurrency, not its
    size, and a lone reservation never waits for a timer. A settlement is not a call of its own:
    it waits (at most `settle_delay` seconds) to go with the next reservations, applied before they
    are checked; when none come, the settlements still waiting go together."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        lease_seconds: float = STREAM_LEASE_SECONDS,
        settle_delay: float = SETTLE_DELAY_SECONDS,
        max_asks: int = MAX_ASKS_PER_CALL,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease = lease_seconds
        self._settle_delay = settle_delay
        self._max_asks = max_asks
        # Registered once; each call is an EVALSHA (redis-py loads the script again if Redis lost it).
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._renew = redis.register_script(_RENEW)
        self._running: dict[str, Ask] = {}  # this instance's streams holding slots, by stream id
        self._renewing: asyncio.Task[None] | None = None
        self._asks: list[tuple[Ask, asyncio.Future[list[int]]]] = []  # waiting for the next call
        self._reserving: asyncio.Task[None] | None = None  # the task making reservation calls
        self._unsent: list[Any] = []  # settlements' arguments, flattened
        self._unsent_count = 0
        self._sending: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, ask: Ask) -> Verdict:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[list[int]] = loop.create_future()
        self._asks.append((ask, reply))
        if self._reserving is None:
            # In a context of its own: the task serves many requests, not the one that started it.
            self._reserving = loop.create_task(
                self._send_reservations(), name="parley-limits-reserve", context=contextvars.Context()
            )
        refusal, scope, retry_ms, window, reset_ms, *left = await reply
        return Verdict(
            None if refusal == 0 else REFUSALS[refusal - 1],
            scope,
            NEVER if retry_ms < 0 else retry_ms / 1000,
            window,
            reset_ms / 1000,
            tuple(None if value < 0 else value for value in left[0::2]),
            tuple(None if value < 0 else value for value in left[1::2]),
        )

    async def _send_reservations(self) -> None:
        """Calls with the reservations waiting, until none are left."""
        batch: list[tuple[Ask, asyncio.Future[list[int]]]] = []
        try:
            while self._asks:
                batch, self._asks = self._asks[: self._max_asks], self._asks[self._max_asks :]
                count, unsent = self._take_unsent()
                args: list[Any] = [self._prefix, count, *unsent, len(batch)]
                for ask, _ in batch:
                    args += self._ask_args(ask)
                try:
                    replies = await self._reserve(args=args)
                except RedisError as exc:
                    # (the settlements it carried are dropped, not sent twice: the counters expire by themselves)
                    log.error("Redis refused %d limits reservations: %s", len(batch), exc)
                    for _, reply in batch:
                        if not reply.done():
                            reply.set_exception(LimitsUnavailable())
                    continue
                for (ask, reply), values in zip(batch, replies, strict=True):
                    self._answer(ask, reply, [int(value) for value in values])
                batch = []
        except BaseException:  # (stopped at shutdown): nobody is left waiting for an answer
            for _, reply in [*batch, *self._asks]:
                if not reply.done():
                    reply.set_exception(LimitsUnavailable())
            self._asks = []
            raise
        finally:
            self._reserving = None

    def _answer(self, ask: Ask, reply: asyncio.Future[list[int]], values: list[int]) -> None:
        granted = values[0] == 0
        if reply.done():  # its request was cancelled meanwhile: what was taken is given back
            if granted:
                self._queue_settlement(ask, values[3], tokens_delta=-ask.tokens, requests_delta=-1)
            return
        if granted and any(scope.limits.max_streams is not None for scope in ask.scopes):
            self._running[ask.stream_id] = ask
            if self._renewing is None:
                self._renewing = asyncio.get_running_loop().create_task(
                    self._renew_leases(), name="parley-limits-leases"
                )
        reply.set_result(values)

    def _ask_args(self, ask: Ask) -> list[Any]:
        return [
            ask.tokens,
            ask.stream_id,
            self._lease,
            ask.day,
            round(ask.until_next_day),
            ask.month,
            round(ask.until_next_month),
            ask.requests,
            ask.headroom,
            len(ask.scopes),
            *_scope_args(ask),
        ]

    async def settle(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        self._queue_settlement(ask, window, tokens_delta=tokens_delta, requests_delta=requests_delta)

    def _queue_settlement(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        self._running.pop(ask.stream_id, None)
        self._unsent += [window, ask.day, ask.month, tokens_delta, requests_delta, ask.stream_id, len(ask.scopes)]
        self._unsent += _scope_args(ask)
        self._unsent_count += 1
        if self._sending is None:
            self._sending = asyncio.get_running_loop().call_later(self._settle_delay, self._send_soon)

    def _take_unsent(self) -> tuple[int, list[Any]]:
        count, unsent = self._unsent_count, self._unsent
        self._unsent, self._unsent_count = [], 0
        if self._sending is not None:
            self._sending.cancel()
            self._sending = None
        return count, unsent

    def _send_soon(self) -> None:
        self._sending = None
        task = asyncio.get_running_loop().create_task(self.send_settlements(), name="parley-limits-settle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_settlements(self) -> None:
        """Send the settlements still waiting for a reservation to carry them."""
        count, unsent = self._take_unsent()
        if not count:
            return
        try:
            await self._settle(args=[self._prefix, count, *unsent])
        except RedisError as exc:
            log.warning("could not settle %d limits reservations in Redis: %s", count, exc)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            pairs = [
                value
                for stream_id, ask in list(self._running.items())
                for scope in ask.scopes
                if scope.limits.max_streams is not None
                for value in (scope.name, stream_id)
            ]
            if not pairs:
                continue
            try:
                await self._renew(args=[self._prefix, self._lease, *pairs])
            except Exception as exc:  # Redis away for a moment: the next round tries again
                log.warning("could not renew stream slots in Redis: %s", exc)

    async def aclose(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if self._reserving is not None:
            await self._reserving
        await self.send_settlements()
        for task in list(self._tasks):
            await task
        await self._redis.aclose()
