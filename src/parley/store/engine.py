"""Async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg), set up the way the store needs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from parley.store.urls import async_url, sqlite_path

T = TypeVar("T")

# Execution option marking a transaction that will write. On SQLite it begins with BEGIN IMMEDIATE,
# taking the write lock up front: a deferred transaction that reads and then writes can fail at
# once with SQLITE_BUSY when another connection wrote in between, where IMMEDIATE waits its turn.
WRITE = "parley_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_SECONDS = 10.0
# Fixed pools, no overflow: under load a request waits a moment for a connection instead of
# opening (and soon closing) one of its own, which on SQLite starts a thread each time. SQLite
# writes through one connection at a time (the store's writer) and reads through the others.
SQLITE_CONNECTIONS = 5
POSTGRES_CONNECTIONS = 16


def create_engine(url: str | URL) -> AsyncEngine:
    """An engine for `url` (user-style URLs accepted); SQLite's directory is created if missing."""
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        path = sqlite_path(target)
        pool: dict[str, Any] = {}
        if path is not None:  # (an in-memory database has one connection, and no pool to size)
            path.parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": SQLITE_CONNECTIONS, "max_overflow": 0}
        engine = create_async_engine(target, **pool)
        _configure_sqlite(engine.sync_engine)
        return engine
    # pre_ping: a connection the server closed (restart, idle timeout, database dropped) is
    # replaced, not handed out. A connect that gets no answer fails in CONNECT_TIMEOUT_SECONDS
    # (asyncpg's default is 60), unless the URL sets `timeout` itself.
    connect_args = {} if "timeout" in target.query else {"timeout": CONNECT_TIMEOUT_SECONDS}
    return create_async_engine(
        target, pool_pre_ping=True, pool_size=POSTGRES_CONNECTIONS, max_overflow=0, connect_args=connect_args
    )


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
        # In WAL mode, NORMAL syncs at checkpoints, not at every commit: a committed write survives
        # the process being killed (the durability Parley promises), and only a power loss or an
        # OS crash can take back the last commits. FULL would add an fsync to every batch.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class OwnSqliteConnection:
    """A `sqlite3` connection of the store's own (its writer's, its window reader's) to the file at
    `path`, set up as the engine's are (busy timeout, foreign keys) with `pragmas` more, made when
    first used and used only from a thread of its own: a whole piece of work is one thread hop."""

    def __init__(self, path: Path, name: str, *pragmas: str) -> None:
        self._path = path
        self._pragmas = (f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys = ON", *pragmas)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parley-sqlite-{name}")
        self._connection: sqlite3.Connection | None = None  # made and used in the thread only

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` done with the connection, in its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run, work)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                for pragma in self._pragmas:
                    db.execute(f"PRAGMA {pragma}")
            except BaseException:
                db.close()
                raise
            self._connection = db
        return work(self._connection)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
