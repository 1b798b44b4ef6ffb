"""Real Redis for tests: a client whose keys all start with a prefix of the test's own, removed after."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("PARLEY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def new_prefix() -> str:
    return f"parley-test-{uuid.uuid4().hex[:12]}:"


async def connected(url: str = REDIS_URL) -> Redis:
    """A client of the test Redis; skips the test (a failure under PARLEY_REQUIRE_SERVICES) when it is away."""
    client = Redis.from_url(url)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    return client


async def remove_keys(prefix: str, url: str = REDIS_URL) -> None:
    """Delete this test's keys (only those: other tests and engineers share the database)."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own, its keys removed afterwards."""
    prefix = new_prefix()
    try:
        yield prefix
    finally:
        await remove_keys(prefix)
