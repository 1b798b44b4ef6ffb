"""Whether the database can be used now, and how the store heals when it comes back.

A failure that means the database can't be used at the moment (connection refused or lost, the
database missing or shutting down, no pooled connection free, SQLite's file locked or unopenable,
or a database without Parley's tables) becomes `StoreUnavailable`: a 503 the client may retry,
whose message names no host or database; the driver's words go to the log, once per change of
state. Every other error (integrity errors, the store's own domain errors, bugs) is left alone.

A database that answers without Parley's schema (re-created empty, restored from an old dump) is
migrated again: in the background, at most once every `REPAIR_INTERVAL_SECONDS`, started by
`/ready` or by a request that met the missing schema. Migrations take a lock, so several servers
repairing at once take turns and the second finds nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time

from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.errors import StoreUnavailable
from parley.store.migrator import VERSION_TABLE, alembic_config, migrate

log = logging.getLogger("parley.store")

UNREACHABLE = "database unreachable"
BUSY = "database busy"
SCHEMA_MISSING = "database schema missing"
SCHEMA_BEHIND = "database schema behind"
REPAIR_INTERVAL_SECONDS = 5.0

# PostgreSQL SQLSTATEs (a class, or one code) meaning the database can't serve now: connection
# exceptions (08), authorization (28: a role or password changed under us), the database does
# not exist (3D000), insufficient resources (53: too many connections, disk full), and the
# server shutting down or starting (57P01-57P03).
_UNREACHABLE_STATES = ("08", "28", "3D000", "53", "57P01", "57P02", "57P03")
_SCHEMA_STATES = {"42P01": SCHEMA_MISSING, "3F000": SCHEMA_MISSING, "42703": SCHEMA_BEHIND}
# SQLite says it in words only (sqlite3.OperationalError).
_SQLITE_MESSAGES = (
    ("database is locked", BUSY),
    ("database table is locked", BUSY),
    ("unable to open database file", UNREACHABLE),
    ("disk i/o error", UNREACHABLE),
    ("readonly database", UNREACHABLE),
    ("no such table", SCHEMA_MISSING),
    ("no such column", SCHEMA_BEHIND),
    ("has no column named", SCHEMA_BEHIND),
)


def as_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable that `exc` amounts to, or None for any other kind of error."""
    reason = _reason(exc)
    if reason is None:
        return None
    schema = reason in (SCHEMA_MISSING, SCHEMA_BEHIND)
    return StoreUnavailable(reason, detail=_driver_words(exc), schema=schema)


def _driver_words(exc: BaseException) -> str:
    """What the driver said, without SQLAlchemy's statement and parameters (a user's message text)."""
    said = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    return f"{type(said).__name__}: {said}"


def _reason(exc: BaseException) -> str | None:
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection free in time
        return BUSY
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, no such host, connect timeout
        return UNREACHABLE
    state = _sqlstate(exc)
    if state is not None:
        if state in _SCHEMA_STATES:
            return _SCHEMA_STATES[state]
        if state.startswith(_UNREACHABLE_STATES):
            return UNREACHABLE
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:  # the driver saw the connection die
        return UNREACHABLE
    # (raised by SQLAlchemy, or by sqlite3 itself where the store's writer drives it directly)
    said = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(said, sqlite3.OperationalError):
        words = str(said).lower()
        return next((reason for phrase, reason in _SQLITE_MESSAGES if phrase in words), None)
    return None


def _sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE, wherever the driver and SQLAlchemy put it."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None


class Availability:
    """One store's view of its database: failures translated and logged, the schema repaired."""

    def __init__(self, engine: AsyncEngine, *, repair_interval: float = REPAIR_INTERVAL_SECONDS) -> None:
        self._engine = engine
        self._repair_interval = repair_interval
        self.down: str | None = None  # the reason last met, until the database next answers
        self._repairing: asyncio.Task[None] | None = None
        self._last_repair = -math.inf
        self._revisions: tuple[str, frozenset[str]] | None = None  # (head, every revision known here)

    def failed(self, exc: BaseException) -> StoreUnavailable | None:
        """The StoreUnavailable for `exc` (None: not an availability failure), logged if news."""
        error = as_unavailable(exc)
        if error is None:
            return None
        if error.reason != self.down:
            log.warning("conversation store unavailable (%s): %s", error.reason, error.detail)
            self.down = error.reason
        if error.schema:
            self.repair()
        return error

    def recovered(self) -> None:
        if self.down is not None:
            log.warning("conversation store available again (was: %s)", self.down)
            self.down = None

    def repair(self) -> None:
        """Run the migrations again in the background, unless that is under way or was just tried."""
        now = time.monotonic()
        running = self._repairing is not None and not self._repairing.done()
        if running or now - self._last_repair < self._repair_interval:
            return
        self._last_repair = now
        self._repairing = asyncio.get_running_loop().create_task(self._migrate(), name="parley-schema-repair")

    async def _migrate(self) -> None:
        log.warning("setting up the database schema again")
        try:
            await migrate(self._engine)
        except Exception as exc:
            log.warning("could not set up the database schema again: %s", _driver_words(exc))
        else:
            log.warning("database schema set up again")

    async def check(self) -> str | None:
        """None when the store can serve; else the reason (a phrase naming no host or database)."""
        try:
            async with self._engine.connect() as connection:
                found = set((await connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars())
        except Exception as exc:
            error = self.failed(exc)
            if error is None:  # not a known outage, but /ready still answers, and says so
                log.warning("readiness check of the database failed: %s", _driver_words(exc))
                return UNREACHABLE
            return error.reason
        head, known = await self._known_revisions()
        # A revision this server doesn't know means a newer server migrated further: its tables serve us.
        problem = SCHEMA_MISSING if not found else SCHEMA_BEHIND if head not in found and found <= known else None
        if problem is None:
            self.recovered()
            return None
        if problem != self.down:
            log.warning("conversation store unavailable (%s): revision %s, this server needs %s", problem, found, head)
            self.down = problem
        self.repair()
        return problem

    async def _known_revisions(self) -> tuple[str, frozenset[str]]:
        if self._revisions is None:
            self._revisions = await asyncio.to_thread(_read_revisions)
        return self._revisions

    async def aclose(self) -> None:
        """Stop waiting for a repair in progress (its worker thread finishes on its own)."""
        if self._repairing is not None:
            self._repairing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repairing


def _read_revisions() -> tuple[str, frozenset[str]]:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    return head, frozenset(revision.revision for revision in script.walk_revisions())
