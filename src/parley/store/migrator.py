"""Alembic, run from code: `await migrate(url)` brings any database from empty to the newest schema.

Each upgrade runs in one transaction (both databases have transactional DDL), so a failed
upgrade leaves the previous schema. Servers starting together take turns: on PostgreSQL a
transaction-scoped advisory lock, on SQLite the write lock (BEGIN IMMEDIATE). Whoever comes
second finds the schema current and does nothing.

Alembic's `op` and `context` are process-wide, so migrations in one process must not overlap
(two at once would run each other's steps): they run one at a time, in a worker thread with
its own event loop and engine, which also keeps file loading and DDL off the server's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.engine import create_engine, writer
from parley.store.urls import async_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "parley_alembic_version"
# pg_advisory_xact_lock key: "parley" as an integer; any constant shared by all Parley servers.
_MIGRATION_LOCK = int.from_bytes(b"parley", "big")
# Guards alembic's process-wide proxies (see above); a lock, not a resource, so module level is right.
_ALEMBIC_IN_USE = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for the shipped migrations; with `connection`, env.py runs on it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def migrate(database: str | URL | AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` (the newest by default). Safe to call on every start."""
    await _in_worker(database, lambda connection: command.upgrade(alembic_config(connection), revision))


async def downgrade(database: str | URL | AsyncEngine, revision: str) -> None:
    """Step the schema back to `revision` (for rolling back a release); data in dropped columns is lost."""
    await _in_worker(database, lambda connection: command.downgrade(alembic_config(connection), revision))


async def current_revision(database: str | URL | AsyncEngine) -> str | None:
    """The schema's revision, or None for a database Parley has not set up."""

    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    engine, owned = _engine(database)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        if owned:
            await engine.dispose()


async def _in_worker(database: str | URL | AsyncEngine, step: Callable[[Connection], object]) -> None:
    url = database.url if isinstance(database, AsyncEngine) else async_url(database)
    await asyncio.to_thread(_run_alone, url, step)


def _run_alone(url: URL, step: Callable[[Connection], object]) -> None:
    with _ALEMBIC_IN_USE:
        asyncio.run(_locked(url, step))


async def _locked(url: URL, step: Callable[[Connection], object]) -> None:
    engine = create_engine(url)
    try:
        async with writer(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                # Held until this transaction ends: a second server waits here, then sees our work.
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            await connection.run_sync(step)
    finally:
        await engine.dispose()


def _engine(database: str | URL | AsyncEngine) -> tuple[AsyncEngine, bool]:
    if isinstance(database, AsyncEngine):
        return database, False
    return create_engine(database), True
