"""Several `parley serve` processes sharing one PostgreSQL database and one Redis, for the tests of
what any instance can do with another's runs. Databases are named `resume_*`, Redis keys start with
`parley-test-resume-*` in database 5 (tests of other parts use their own)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.databases import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.support.process import ServerProcess, parley_process

REDIS_URL = "redis://127.0.0.1:6379/5"


@dataclass
class Fleet:
    servers: list[ServerProcess]
    config: Path
    prefix: str

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]


@contextlib.contextmanager
def shared_services(folder: Path, models_toml: str, extra_toml: str = "") -> Iterator[tuple[Path, str]]:
    """A config file for instances sharing a new PostgreSQL database and a Redis prefix; both removed after.
    Skips (a failure under PARLEY_REQUIRE_SERVICES) when PostgreSQL or Redis can't be reached."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    try:
        database_url = asyncio.run(create_postgres_database(prefix="resume"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    prefix = f"parley-test-resume-{uuid.uuid4().hex[:12]}"
    config = folder / "parley.toml"
    config.write_text(
        f'database_url = "{database_url}"\ndata_dir = "{folder}"\n'
        f'redis_url = "{REDIS_URL}"\nredis_prefix = "{prefix}"\n{extra_toml}{models_toml}'
    )
    try:
        yield config, prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        asyncio.run(drop_postgres_database(database_url))


@contextlib.contextmanager
def fleet_of(count: int, folder: Path, models_toml: str, extra_toml: str = "") -> Iterator[Fleet]:
    with shared_services(folder, models_toml, extra_toml) as (config, prefix), contextlib.ExitStack() as stack:
        servers = [stack.enter_context(parley_process(config)) for _ in range(count)]
        yield Fleet(servers, config, prefix)
