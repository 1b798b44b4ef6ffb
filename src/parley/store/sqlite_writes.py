"""The turn path's writes on SQLite, through `sqlite3` itself: a whole batch in one thread hop.

The store's writer owns one connection (set up as the engine sets up its own: WAL, synchronous
NORMAL, busy timeout, foreign keys), used from one thread of its own. A batch is one BEGIN
IMMEDIATE ... COMMIT in that thread; sqlite3 keeps each statement below prepared. Values are stored
exactly as SQLAlchemy's column types store them (`schema.py`), so the store's reads don't change.
Other writes of this server (the store's own methods, usage) take the same lock, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parley.store.engine import OwnSqliteConnection
from parley.store.turn_writes import (
    FINISHED_COLUMNS,
    FinishReply,
    OpenedTurn,
    OpenTurn,
    SaveProgress,
    conversation_rows,
    placed_turns,
    turn_rounds,
)
from parley.store.writer import Kinds, WriteOp

_UPSERT_CONVERSATION = """
INSERT INTO conversations (id, title, model, agent, message_count, created_at, updated_at, owner)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    message_count = conversations.message_count + excluded.message_count,
    updated_at = excluded.updated_at,
    title = coalesce(conversations.title, excluded.title),
    model = coalesce(excluded.model, conversations.model),
    agent = coalesce(excluded.agent, conversations.agent)
WHERE excluded.owner IS NULL OR conversations.owner = excluded.owner
RETURNING message_count, owner
"""
_INSERT_MESSAGE = """
INSERT INTO messages (id, conversation_id, position, role, content, model, agent, status, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SAVE_PROGRESS = "UPDATE messages SET content = ?, reasoning = ?, saved_at = ? WHERE id = ? AND status = 'streaming'"
_MARK_ALIVE = "UPDATE messages SET saved_at = ? WHERE id = ? AND status = 'streaming'"
_TOUCH_CONVERSATION = "UPDATE conversations SET updated_at = ? WHERE id = ?"
_FINISH_REPLY = (
    f"UPDATE messages SET {', '.join(f'{column} = ?' for column in FINISHED_COLUMNS)}, saved_at = ? "
    "WHERE id = ? AND status = 'streaming'"
)
_JSON_COLUMNS = frozenset({"tool_calls", "steps", "sources"})


def stored_time(moment: datetime) -> str:
    """A moment as SQLAlchemy's SQLite DATETIME stores `UTCDateTime`'s value (naive UTC, microseconds)."""
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}"
    )


def _stored_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)  # as SQLAlchemy's JSON(none_as_null=True)


def _open_turns(db: sqlite3.Connection, ops: Sequence[OpenTurn]) -> list[OpenedTurn | None]:
    opened: dict[int, OpenedTurn] = {}
    messages: list[tuple[Any, ...]] = []
    for turns in turn_rounds(ops):
        counts = {}
        for row in conversation_rows(turns):
            values = (row["id"], row["title"], row["model"], row["agent"], row["message_count"])
            times = (stored_time(row["created_at"]), stored_time(row["updated_at"]), row["owner"])
            returned = db.execute(_UPSERT_CONVERSATION, values + times).fetchone()
            if returned is not None:
                counts[row["id"]] = (returned[0], returned[1])
        for op, position, owner in placed_turns(turns, counts):
            opened[id(op)] = OpenedTurn(op.conversation_id, op.user_message_id, op.reply_id, position, owner)
            now = stored_time(op.now)
            messages.append(
                (op.user_message_id, op.conversation_id, position, "user", op.content, None, op.agent, "complete", now)
            )
            messages.append(
                (op.reply_id, op.conversation_id, position + 1, "assistant", "", op.model, op.agent, "streaming", now)
            )
    if messages:
        db.executemany(_INSERT_MESSAGE, messages)
    return [opened.get(id(op)) for op in ops]


def _save_progress(db: sqlite3.Connection, ops: Sequence[SaveProgress]) -> list[None]:
    progress = [
        (item.content, item.reasoning, stored_time(op.now), item.message_id) for op in ops for item in op.progress
    ]
    if progress:
        db.executemany(_SAVE_PROGRESS, progress)
    alive = [(stored_time(op.now), reply_id) for op in ops for reply_id in op.alive]
    if alive:
        db.executemany(_MARK_ALIVE, alive)
    return [None] * len(ops)


def _finish_replies(db: sqlite3.Connection, ops: Sequence[FinishReply]) -> list[bool]:
    # The conversations first, as every writer locks them: in one order.
    touched = sorted(ops, key=lambda op: op.conversation_id)
    db.executemany(_TOUCH_CONVERSATION, [(stored_time(op.now), op.conversation_id) for op in touched])
    finished = []
    for op in ops:
        values = [
            _stored_json(op.values[column]) if column in _JSON_COLUMNS else op.values[column]
            for column in FINISHED_COLUMNS
        ]
        cursor = db.execute(_FINISH_REPLY, (*values, stored_time(op.now), op.reply_id))
        finished.append(cursor.rowcount == 1)  # 0: no longer streaming, left as it was
    return finished


_APPLIERS: dict[type[WriteOp[Any]], Callable[[sqlite3.Connection, Any], Sequence[Any]]] = {
    OpenTurn: _open_turns,
    SaveProgress: _save_progress,
    FinishReply: _finish_replies,
}


class SqliteApplier:
    """The writer's own connection to the database file at `path`, in its own thread."""

    def __init__(self, path: Path, lock: asyncio.Lock) -> None:
        self._lock = lock  # this server's writers, one at a time
        self._db = OwnSqliteConnection(path, "writer", "journal_mode = WAL", "synchronous = NORMAL")

    def handles(self, kind: type[WriteOp[Any]]) -> bool:
        return kind in _APPLIERS

    async def apply(self, kinds: Kinds) -> list[Sequence[Any]]:
        async with self._lock:
            return await self._db.run(lambda db: _apply(db, kinds))

    async def aclose(self) -> None:
        await self._db.aclose()


def _apply(db: sqlite3.Connection, kinds: Kinds) -> list[Sequence[Any]]:
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [_APPLIERS[kind](db, ops) for kind, ops in kinds]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return results
