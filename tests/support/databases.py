"""Databases for store tests: SQLite files, and PostgreSQL databases made for the test run.

Use from a test module with `pytest_plugins = ["tests.support.databases"]`. Both fixtures run
each test once per backend:

- `database_url`: an empty database (no tables): a new SQLite file, or a new PostgreSQL
  database created for the test and dropped after it. For migrations, restarts, several servers.
- `store`: a migrated, empty ConversationStore. On PostgreSQL its database is created and
  migrated once per run and emptied before each test (creating one costs ~0.5 s).

The PostgreSQL server is PARLEY_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test);
if it can't be reached, the PostgreSQL variants skip, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from parley.store import ConversationStore, async_url, migrate, open_store

POSTGRES_URL = os.environ.get("PARLEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


class PostgresUnavailable(Exception):
    pass


def _admin_engine(server_url: str) -> AsyncEngine:
    return create_async_engine(
        async_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )


async def create_postgres_database(server_url: str = POSTGRES_URL, prefix: str = "parley_test") -> str:
    """Create an empty database on the server at `server_url`, named `prefix` and a random part; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine(server_url)
    try:
        async with engine.connect() as admin:
            await admin.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, DBAPIError) as exc:
        shown = make_url(server_url).render_as_string(hide_password=True)
        raise PostgresUnavailable(f"PostgreSQL not reachable at {shown}: {type(exc).__name__}: {exc}") from exc
    finally:
        await engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    engine = _admin_engine(make_url(url).set(database="postgres").render_as_string(hide_password=False))
    try:
        async with engine.connect() as admin:
            await admin.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def fresh_postgres_database(server_url: str = POSTGRES_URL) -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    url = await create_postgres_database(server_url)
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (no tables yet), once per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'parley.db'}"
        return
    try:
        url = await create_postgres_database()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, for tests that need PostgreSQL itself (several servers
    sharing one database; a SQLite file belongs to one server)."""
    try:
        url = asyncio.run(create_postgres_database())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


@pytest.fixture(scope="session")
def _postgres_store_url() -> Iterator[str | PostgresUnavailable]:
    """A migrated database shared by the run's `store` tests (emptied before each), or why there is none."""

    async def create() -> str:
        url = await create_postgres_database()
        await migrate(url)
        return url

    try:
        url = asyncio.run(create())
    except PostgresUnavailable as exc:
        yield exc
        return
    try:
        yield url
    finally:
        asyncio.run(drop_postgres_database(url))


@pytest.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, _postgres_store_url: str | PostgresUnavailable
) -> AsyncIterator[ConversationStore]:
    """A migrated store holding nothing, closed after the test."""
    if request.param == "sqlite":
        opened = await open_store(f"sqlite:///{tmp_path / 'parley.db'}")
    elif isinstance(_postgres_store_url, PostgresUnavailable):
        pytest.skip(str(_postgres_store_url))
    else:
        opened = await open_store(_postgres_store_url, run_migrations=False)
        async with opened.engine.begin() as connection:
            await connection.execute(text("TRUNCATE conversations, messages"))
    try:
        yield opened
    finally:
        await opened.aclose()
