"""What `parley keys` runs on: the configured database's keys, and Redis to tell servers of changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis

from parley.access.invalidation import announce_change
from parley.access.key_store import KeyStore
from parley.access.startup import key_hasher
from parley.config import Settings
from parley.redis_connect import connect_redis
from parley.store import create_engine, default_database_url, migrate

T = TypeVar("T")


class KeyAdmin:
    """The keys, and `changed` to tell running servers (over Redis, when configured)."""

    def __init__(self, keys: KeyStore, client: redis.Redis | None, prefix: str) -> None:
        self.keys = keys
        self._client = client
        self._prefix = prefix

    async def changed(self, key_id: str) -> None:
        if self._client is not None:
            await announce_change(self._client, self._prefix, key_id)


async def with_key_store(settings: Settings, work: Callable[[Any, Settings], Awaitable[T]]) -> T:
    engine = create_engine(settings.database_url or default_database_url(settings.data_dir))
    client = None if settings.redis_url is None else connect_redis(settings.redis_url)
    try:
        await migrate(engine)
        return await work(
            KeyAdmin(KeyStore(engine, key_hasher(settings, engine)), client, settings.redis_prefix), settings
        )
    finally:
        if client is not None:
            await client.aclose()
        await engine.dispose()
