"""Parley's Redis clients: redis-py's asyncio client, packing its commands with hiredis.

redis-py's synchronous connections pack a command with hiredis when it is installed; its asyncio
ones always pack in Python, an argument at a time. For the run logs' script call (a hundred
arguments at 64 streams) that packing was most of the client's CPU: hiredis packs the same bytes
(tests/test_redis_connect.py compares them) about five times faster.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.typing import EncodableT


class _HiredisPacking:
    _packer = HiredisRespSerializer()

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)  # type: ignore[arg-type]  # (its hint says a list per argument)
        return packed


_PACKING_WITH_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing_with_hiredis(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (plain TCP, TLS or a Unix socket, as the URL said) packing with hiredis."""
    packing = _PACKING_WITH_HIREDIS.get(connection_class)
    if packing is None:
        packing = type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})
        _PACKING_WITH_HIREDIS[connection_class] = packing
    return packing


def connect_redis(url: str, **options: Any) -> redis.Redis:
    """A client for `url` (`redis://`, `rediss://` or `unix://`); no connection is made until it is used."""
    client = redis.Redis.from_url(url, **options)
    pool = client.connection_pool
    pool.connection_class = _packing_with_hiredis(pool.connection_class)
    return client
