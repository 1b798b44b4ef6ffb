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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from parley.access.limit_counters import NEVER, REFUSALS, Ask, Verdict
from parley.errors import LimitsUnavailable

log = logging.getLogger("parley.access.limits")

STREAM_LEASE_SECONDS = 30.0

# KEYS: none (the keys depend on Redis's clock, read inside). ARGV: prefix, tokens, stream id, lease,
# day, seconds until the next day, month, seconds until the next month; then six per scope:
# name, requests/minute, tokens/minute, streams, daily tokens, monthly tokens (0: no such limit).
# Returns {refusal (0: granted), scope, retry ms, window, reset ms, then per scope: requests
# left, tokens left (-1: no such limit)}.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local prefix, cost, stream, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local day, day_left, month, month_left = ARGV[5], tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local window = math.floor(now / 60)
local elapsed = (now - window * 60) / 60
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
local scopes = (#ARGV - 8) / 6
local refusal, left = nil, {}
for i = 0, scopes - 1 do
  local at = 9 + i * 6
  local name = ARGV[at]
  local rates = {{'req:', tonumber(ARGV[at + 1]), 1, 1}, {'tok:', tonumber(ARGV[at + 2]), cost, 2}}
  for _, rate in ipairs(rates) do
    local limit = rate[2]
    if limit > 0 then
      local previous = count(prefix .. rate[1] .. name .. ':' .. (window - 1))
      local current = count(prefix .. rate[1] .. name .. ':' .. window)
      local used = previous * (1 - elapsed) + current
      table.insert(left, math.max(0, math.floor(limit - used)))
      if not refusal and used + rate[3] > limit then
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
    if not refusal and budget[2] > 0 and count(prefix .. budget[1] .. name .. ':' .. budget[3]) + cost > budget[2] then
      if cost > budget[2] then refusal = {budget[5], i, -1} else refusal = {budget[5], i, budget[4]} end
    end
  end
end
local reset = math.floor((1 - elapsed) * 60000)
if refusal then
  return {refusal[1], refusal[2], math.floor(refusal[3] * 1000), window, reset, unpack(left)}
end
for i = 0, scopes - 1 do
  local at = 9 + i * 6
  local name = ARGV[at]
  if tonumber(ARGV[at + 1]) > 0 then
    local key = prefix .. 'req:' .. name .. ':' .. window
    redis.call('INCR', key)
    redis.call('EXPIRE', key, 120)
    left[2 * i + 1] = math.max(0, left[2 * i + 1] - 1)
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
return {0, -1, 0, window, reset, unpack(left)}
"""

# ARGV: prefix, window, day, month, tokens delta, requests delta, stream id; six per scope as above.
# Counters that have expired meanwhile are left alone (not recreated without an expiry).
_SETTLE = """
local prefix, window, day, month = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tokens, requests, stream = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local function adjust(key, delta)
  if delta ~= 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, delta) end
end
for at = 8, #ARGV, 6 do
  local name = ARGV[at]
  if tonumber(ARGV[at + 1]) > 0 then adjust(prefix .. 'req:' .. name .. ':' .. window, requests) end
  if tonumber(ARGV[at + 2]) > 0 then adjust(prefix .. 'tok:' .. name .. ':' .. window, tokens) end
  if tonumber(ARGV[at + 3]) > 0 then redis.call('ZREM', prefix .. 'streams:' .. name, stream) end
  if tonumber(ARGV[at + 4]) > 0 then adjust(prefix .. 'day:' .. name .. ':' .. day, tokens) end
  if tonumber(ARGV[at + 5]) > 0 then adjust(prefix .. 'month:' .. name .. ':' .. month, tokens) end
end
return 0
"""

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
    def __init__(self, redis: Redis, prefix: str, *, lease_seconds: float = STREAM_LEASE_SECONDS) -> None:
        self._redis = redis
        self._prefix = prefix
        self._lease = lease_seconds
        # Registered once; each call is an EVALSHA (redis-py loads the script again if Redis lost it).
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._renew = redis.register_script(_RENEW)
        self._running: dict[str, Ask] = {}  # this instance's streams holding slots, by stream id
        self._renewing: asyncio.Task[None] | None = None

    async def reserve(self, ask: Ask) -> Verdict:
        try:
            reply = await self._reserve(args=self._reserve_args(ask))
        except RedisError as exc:
            log.error("Redis refused a limits reservation: %s", exc)
            raise LimitsUnavailable() from exc
        refusal, scope, retry_ms, window, reset_ms, *left = (int(value) for value in reply)
        granted = refusal == 0
        if granted and any(scope.limits.max_streams is not None for scope in ask.scopes):
            self._running[ask.stream_id] = ask
            if self._renewing is None:
                self._renewing = asyncio.get_running_loop().create_task(
                    self._renew_leases(), name="parley-limits-leases"
                )
        return Verdict(
            None if granted else REFUSALS[refusal - 1],
            scope,
            NEVER if retry_ms < 0 else retry_ms / 1000,
            window,
            reset_ms / 1000,
            tuple(None if value < 0 else value for value in left[0::2]),
            tuple(None if value < 0 else value for value in left[1::2]),
        )

    def _reserve_args(self, ask: Ask) -> list[Any]:
        return [
            self._prefix,
            ask.tokens,
            ask.stream_id,
            self._lease,
            ask.day,
            round(ask.until_next_day),
            ask.month,
            round(ask.until_next_month),
            *_scope_args(ask),
        ]

    async def settle(self, ask: Ask, window: int, *, tokens_delta: int, requests_delta: int) -> None:
        self._running.pop(ask.stream_id, None)
        await self._settle(
            args=[
                self._prefix,
                window,
                ask.day,
                ask.month,
                tokens_delta,
                requests_delta,
                ask.stream_id,
                *_scope_args(ask),
            ]
        )

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
        await self._redis.aclose()
