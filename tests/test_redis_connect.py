"""Parley's Redis clients pack commands with hiredis: the bytes redis-py itself would send, and a
real Redis answers them alike (scripts, pipelines, large and non-ASCII values)."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.typing import EncodableT

from parley.redis_connect import connect_redis
from tests.support.redis import REDIS_URL, connected, redis_prefix

COMMANDS: list[tuple[EncodableT, ...]] = [
    ("SET", "k", 1),
    ("SET", "k", -1.25),
    ("CONFIG GET", "maxmemory"),  # a command name with a space: two words on the wire
    (b"CLIENT SETNAME", b"parley"),
    ("EVALSHA", "a" * 40, 0, b"b", "run_1", 7, 10**20, "é ü 中"),
    ("SET", "big", b"x" * 20_000),  # over redis-py's chunking threshold
    ("SET", "view", memoryview(b"abc")),
]


@pytest.mark.parametrize("url", [REDIS_URL, "rediss://127.0.0.1:6380/0", "unix:///tmp/parley-test.sock"])
@pytest.mark.parametrize("command", COMMANDS, ids=range(len(COMMANDS)))
def test_commands_are_packed_as_redis_py_packs_them(url: str, command: tuple[EncodableT, ...]) -> None:
    pool = connect_redis(url).connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)  # (not connected: packing needs no server)
    expected: dict[str, type[AbstractConnection]] = {
        "redis": Connection,
        "rediss": SSLConnection,
        "unix": UnixDomainSocketConnection,
    }
    reference = expected[url.split(":", 1)[0]]
    assert isinstance(connection, reference), "the URL still decides TCP, TLS or a Unix socket"
    assert b"".join(connection.pack_command(*command)) == b"".join(reference.pack_command(connection, *command))


async def test_a_real_redis_answers_what_they_send() -> None:
    await (await connected()).aclose()
    client = connect_redis(REDIS_URL)
    try:
        async with redis_prefix() as prefix:
            value = "é ü 中 ".encode() * 5_000
            assert await client.set(f"{prefix}big", value, ex=60)
            assert await client.get(f"{prefix}big") == value
            script = client.register_script("return {ARGV[1], #ARGV, redis.call('INCRBY', KEYS[1], ARGV[2])}")
            assert await script(keys=[f"{prefix}n"], args=["one", 5]) == [b"one", 2, 5]
            async with client.pipeline(transaction=True) as pipe:
                pipe.incrby(f"{prefix}n", 2)
                pipe.expire(f"{prefix}n", 60)
                pipe.get(f"{prefix}n")
                assert await pipe.execute() == [7, True, b"7"]
    finally:
        await client.aclose()
