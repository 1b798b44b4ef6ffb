"""A turn's history window on SQLite, read through `sqlite3` itself: both statements in one thread hop.

The reader owns one connection of its own (not the writer's: in WAL mode readers run beside the
writer), set up as the engine sets up its own (busy timeout, foreign keys) and used from one thread
of its own. The window and the conversation's state are read in one read transaction, so the rows
and the count agree. JSON columns are decoded as SQLAlchemy's JSON type decodes them (`schema.py`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.engine import OwnSqliteConnection
from parley.store.urls import sqlite_path

# A message as `conversations._for_the_model_at` takes it:
# (position, role, content, tool_calls, tool_call_id, status, steps).
WindowRow = tuple[int, str, str, list[dict[str, Any]] | None, str | None, str, list[dict[str, Any]] | None]

# As `conversations._ANY_OWNERS_NEWEST_FIRST` (and `_OWNED_NEWEST_FIRST` with an owner): the
# messages a model sees, newest first; LIMIT -1 is no limit.
_WINDOW = """
SELECT position, role, content, tool_calls, tool_call_id, status, steps
FROM messages
WHERE conversation_id = :conversation
  AND status IN ('complete', 'cancelled')
  AND position < :before
  AND (role != 'assistant' OR content != '' OR (tool_calls IS NOT NULL AND status = 'complete') OR steps IS NOT NULL)
"""
_OWNED = "  AND EXISTS (SELECT 1 FROM conversations WHERE id = :conversation AND owner = :owner)\n"
_NEWEST_FIRST = "ORDER BY position DESC LIMIT :newest"
_STATEMENTS = (_WINDOW + _NEWEST_FIRST, _WINDOW + _OWNED + _NEWEST_FIRST)  # [no owner filter, filter]
_CONVERSATION_STATE = "SELECT message_count, owner FROM conversations WHERE id = :conversation"


class ConversationState(NamedTuple):
    message_count: int
    owner: str | None


@dataclass(frozen=True, slots=True)
class Window:
    rows: Sequence[Sequence[Any]]  # WindowRow's columns, newest first
    state: ConversationState | None  # None: no such conversation


def _decoded(value: str | None) -> Any:
    return None if value is None else json.loads(value)  # as SQLAlchemy's JSON result processor


class SqliteReader:
    """Reads of the database file at `path` through a connection of their own, in their own thread."""

    def __init__(self, path: Path) -> None:
        self._db = OwnSqliteConnection(path, "reader", "query_only = ON")

    async def window(self, conversation_id: str, newest: int | None, before: int, owner: str | None) -> Window:
        """The newest `newest` messages (all with None) before position `before`, with the state."""
        parameters = {"conversation": conversation_id, "newest": -1 if newest is None else newest, "before": before}
        if owner is not None:
            parameters["owner"] = owner
        statement = _STATEMENTS[owner is not None]
        return await self._db.run(lambda db: _read(db, statement, parameters))

    async def aclose(self) -> None:
        await self._db.aclose()


def _read(db: sqlite3.Connection, statement: str, parameters: dict[str, Any]) -> Window:
    db.execute("BEGIN")  # one snapshot for both statements
    try:
        found = db.execute(statement, parameters).fetchall()
        state = db.execute(_CONVERSATION_STATE, parameters).fetchone()
    finally:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")  # (nothing written: it only ends the read)
    rows: list[WindowRow] = [
        (position, role, content, _decoded(tool_calls), tool_call_id, status, _decoded(steps))
        for position, role, content, tool_calls, tool_call_id, status, steps in found
    ]
    return Window(rows, None if state is None else ConversationState(*state))


def history_reader(engine: AsyncEngine) -> SqliteReader | None:
    """A reader for a SQLite file's windows; None (PostgreSQL, in-memory SQLite) leaves them to SQLAlchemy."""
    path = sqlite_path(engine.url)
    if engine.dialect.name == "sqlite" and path is not None:
        return SqliteReader(path)
    return None
