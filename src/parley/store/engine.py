"""Async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg), set up the way the store needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from parley.store.urls import async_url, sqlite_path

# Execution option marking a transaction that will write. On SQLite it begins with BEGIN IMMEDIATE,
# taking the write lock up front: a deferred transaction that reads and then writes can fail at
# once with SQLITE_BUSY when another connection wrote in between, where IMMEDIATE waits its turn.
WRITE = "parley_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_SECONDS = 10.0


def create_engine(url: str | URL) -> AsyncEngine:
    """An engine for `url` (user-style URLs accepted); SQLite's directory is created if missing."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        path = sqlite_path(target)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target)
        _configure_sqlite(engine.sync_engine)
        return engine
    # pre_ping: a connection the server closed (restart, idle timeout, database dropped) is
    # replaced, not handed out. A connect that gets no answer fails in CONNECT_TIMEOUT_SECONDS
    # (asyncpg's default is 60), unless the URL sets `timeout` itself.
    connect_args = {} if "timeout" in target.query else {"timeout": CONNECT_TIMEOUT_SECONDS}
    return create_async_engine(target, pool_pre_ping=True, connect_args=connect_args)


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, with transactions that take SQLite's write lock when they begin."""
    return engine.execution_options(**{WRITE: True})


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver's own implicit BEGINs (which skip DDL and can't be IMMEDIATE); the
        # "begin" hook below emits ours, so every statement, DDL included, is transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")  # readers don't block the writer, nor it them
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
