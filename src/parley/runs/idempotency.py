"""Idempotency keys: a `POST /api/chat` retried with the same `Idempotency-Key` gets the run the
first one started, not a second one.

A record is `digest:run_id` under a key made of the caller's owner and the client's key. The
first request reserves it (`digest:` with no run yet) before it starts anything; a retry that
finds a reservation waits for its run id. The same key with a different request is refused.
Kept in Redis (shared by every instance) when there is one, else in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Protocol

import redis.asyncio as redis

from parley.runs.records import IdempotencyKeyReused

_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.05  # how often a retry looks for the run its twin is starting


class IdempotencyStore(Protocol):
    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        """Store `value` unless the key holds one; the value it already held."""
        ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...


class Idempotency:
    def __init__(self, records: IdempotencyStore) -> None:
        self._records = records

    @staticmethod
    def record_key(owner: str | None, client_key: str) -> str:
        return hashlib.sha256(f"{owner}\0{client_key}".encode()).hexdigest()

    async def claim(self, key: str, digest: str) -> str | None:
        """None: this request is the first, and must `settle` (or `release`) the key. Else the run
        id of the request that was; IdempotencyKeyReused when that one asked for something else."""
        deadline = time.monotonic() + _WAIT_SECONDS
        while True:
            held = await self._records.put_if_absent(key, f"{digest}:".encode())
            if held is None:
                return None
            held_digest, _, run_id = held.decode().partition(":")
            if held_digest != digest:
                raise IdempotencyKeyReused()
            if run_id:
                return run_id
            if time.monotonic() > deadline:  # its twin never started: this one may
                await self._records.delete(key)
                continue
            await asyncio.sleep(_POLL_SECONDS)

    async def settle(self, key: str, digest: str, run_id: str) -> None:
        await self._records.set(key, f"{digest}:{run_id}".encode())

    async def release(self, key: str) -> None:
        await self._records.delete(key)


class MemoryIdempotencyStore:
    def __init__(self, keep_seconds: float) -> None:
        self._keep_seconds = keep_seconds
        self._values: dict[str, tuple[float, bytes]] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [key for key, (until, _) in self._values.items() if until < now]:
            del self._values[key]

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        self._expire()
        held = self._values.get(key)
        if held is not None:
            return held[1]
        self._values[key] = (time.monotonic() + self._keep_seconds, value)
        return None

    async def set(self, key: str, value: bytes) -> None:
        self._values[key] = (time.monotonic() + self._keep_seconds, value)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)


class RedisIdempotencyStore:
    def __init__(self, client: redis.Redis, prefix: str, keep_seconds: float) -> None:
        self._client = client
        self._prefix = f"{prefix}:idem:"
        self._keep_ms = max(int(keep_seconds * 1000), 1)

    async def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._prefix + key, value, px=self._keep_ms, nx=True)
            pipe.get(self._prefix + key)
            stored, held = await pipe.execute()
        return None if stored else held

    async def set(self, key: str, value: bytes) -> None:
        await self._client.set(self._prefix + key, value, px=self._keep_ms)

    async def delete(self, key: str) -> None:
        await self._client.delete(self._prefix + key)
