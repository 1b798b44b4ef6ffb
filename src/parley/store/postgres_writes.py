"""The turn path's writes on PostgreSQL, through asyncpg itself: a batch in as few round trips as it can.

The store's writer keeps one connection of its own (made again after it is lost). Each op kind is
one statement over arrays (`unnest`), prepared once by asyncpg: a batch of opened turns upserts
its conversations and inserts their messages in one statement, a batch of finished replies
touches their conversations and finishes them in another. A statement is atomic on its own, so
a batch of one kind needs no BEGIN or COMMIT: one round trip. A batch of several kinds (or of
progress saves) runs them in one transaction. Values go as the engine's column types send them:
JSON as its text, times as aware datetimes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # (no type information shipped)
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.engine import CONNECT_TIMEOUT_SECONDS
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

# Conversations upserted (their counts raised; another owner's left alone and not returned), and
# each turn's two messages inserted at the positions those counts hand out.
_OPEN_TURNS = """
WITH upserted AS (
    INSERT INTO conversations (id, title, model, agent, message_count, created_at, updated_at, owner)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                         $6::timestamptz[], $7::timestamptz[], $8::text[])
    ON CONFLICT (id) DO UPDATE SET
        message_count = conversations.message_count + excluded.message_count,
        updated_at = excluded.updated_at,
        title = coalesce(conversations.title, excluded.title),
        model = coalesce(excluded.model, conversations.model),
        agent = coalesce(excluded.agent, conversations.agent)
    WHERE excluded.owner IS NULL OR conversations.owner = excluded.owner
    RETURNING id, message_count, owner
), inserted AS (
    INSERT INTO messages (id, conversation_id, position, role, content, model, agent, status, created_at)
    SELECT m.id, m.conversation_id, u.message_count - m.from_end, m.role, m.content, m.model, m.agent,
           m.status, m.created_at
    FROM unnest($9::text[], $10::text[], $11::int[], $12::text[], $13::text[], $14::text[], $15::text[],
                $16::text[], $17::timestamptz[])
         AS m(id, conversation_id, from_end, role, content, model, agent, status, created_at)
    JOIN upserted AS u ON u.id = m.conversation_id
)
SELECT id, message_count, owner FROM upserted
"""
# The conversations' activity first (the replies' update waits on it: rows lock in one order), then
# the replies still streaming finished; those finished are returned with the moment they carry.
_FINISH_REPLIES = f"""
WITH touched AS (
    UPDATE conversations AS c SET updated_at = t.now
    FROM unnest($1::text[], $2::timestamptz[]) AS t(id, now)
    WHERE c.id = t.id
    RETURNING 1
), finished AS (
    UPDATE messages AS m SET
        content = f.content, reasoning = f.reasoning, tool_calls = f.tool_calls::json,
        finish_reason = f.finish_reason, status = f.status, error = f.error,
        prompt_tokens = f.prompt_tokens, completion_tokens = f.completion_tokens,
        time_to_first_token_ms = f.time_to_first_token_ms, total_ms = f.total_ms,
        steps = f.steps::json, agent = f.agent, sources = f.sources::json, saved_at = f.now
    FROM unnest($3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                $10::text[], $11::int[], $12::int[], $13::float8[], $14::float8[], $15::text[], $16::text[],
                $17::text[])
         AS f(id, now, {", ".join(FINISHED_COLUMNS)})
    WHERE m.id = f.id AND m.status = 'streaming' AND (SELECT count(*) FROM touched) >= 0
    RETURNING m.id, m.saved_at
)
SELECT id, saved_at FROM finished
"""
_SAVE_PROGRESS = """
UPDATE messages AS m SET content = p.content, reasoning = p.reasoning, saved_at = p.now
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS p(id, content, reasoning, now)
WHERE m.id = p.id AND m.status = 'streaming'
"""
_MARK_ALIVE = """
UPDATE messages AS m SET saved_at = a.now
FROM unnest($1::text[], $2::timestamptz[]) AS a(id, now)
WHERE m.id = a.id AND m.status = 'streaming'
"""
_JSON_COLUMNS = frozenset({"tool_calls", "steps", "sources"})


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column, the arrays `unnest` takes."""
    return [[row[index] for row in rows] for index in range(width)] if rows else [[] for _ in range(width)]


async def _open_turns(db: asyncpg.Connection, ops: Sequence[OpenTurn]) -> list[OpenedTurn | None]:
    opened: dict[int, OpenedTurn] = {}
    for turns in turn_rounds(ops):
        conversations = [
            (
                r["id"],
                r["title"],
                r["model"],
                r["agent"],
                r["message_count"],
                r["created_at"],
                r["updated_at"],
                r["owner"],
            )
            for r in conversation_rows(turns)
        ]
        messages: list[tuple[Any, ...]] = []
        for conversation_id, mine in turns.items():
            for index, op in enumerate(mine):
                from_end = 2 * (len(mine) - index)
                messages.append(
                    (
                        op.user_message_id,
                        conversation_id,
                        from_end,
                        "user",
                        op.content,
                        None,
                        op.agent,
                        "complete",
                        op.now,
                    )
                )
                messages.append(
                    (
                        op.reply_id,
                        conversation_id,
                        from_end - 1,
                        "assistant",
                        "",
                        op.model,
                        op.agent,
                        "streaming",
                        op.now,
                    )
                )
        returned = await db.fetch(_OPEN_TURNS, *_columns(conversations, 8), *_columns(messages, 9))
        counts = {row["id"]: (row["message_count"], row["owner"]) for row in returned}
        for op, position, owner in placed_turns(turns, counts):
            opened[id(op)] = OpenedTurn(op.conversation_id, op.user_message_id, op.reply_id, position, owner)
    return [opened.get(id(op)) for op in ops]


async def _save_progress(db: asyncpg.Connection, ops: Sequence[SaveProgress]) -> list[None]:
    progress = [(item.message_id, item.content, item.reasoning, op.now) for op in ops for item in op.progress]
    if progress:
        await db.execute(_SAVE_PROGRESS, *_columns(progress, 4))
    alive = [(reply_id, op.now) for op in ops for reply_id in op.alive]
    if alive:
        await db.execute(_MARK_ALIVE, *_columns(alive, 2))
    return [None] * len(ops)


async def _finish_replies(db: asyncpg.Connection, ops: Sequence[FinishReply]) -> list[bool]:
    activity: dict[str, Any] = {}
    for op in ops:  # one update a conversation: its latest moment
        activity[op.conversation_id] = op.now
    touched = sorted(activity.items())
    replies = [
        (
            op.reply_id,
            op.now,
            *(_json(op.values[c]) if c in _JSON_COLUMNS else op.values[c] for c in FINISHED_COLUMNS),
        )
        for op in ops
    ]
    rows = await db.fetch(_FINISH_REPLIES, *_columns(touched, 2), *_columns(replies, 2 + len(FINISHED_COLUMNS)))
    # A reply finished here carries its op's moment in saved_at: nothing else writes that moment.
    finished = {(row["id"], row["saved_at"]) for row in rows}
    return [(op.reply_id, op.now) in finished for op in ops]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)  # as SQLAlchemy's JSON(none_as_null=True)


_APPLIERS: dict[type[WriteOp[Any]], Callable[[asyncpg.Connection, Any], Awaitable[Sequence[Any]]]] = {
    OpenTurn: _open_turns,
    SaveProgress: _save_progress,
    FinishReply: _finish_replies,
}


class PostgresApplier:
    """The writer's own asyncpg connection to the engine's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        _, options = engine.dialect.create_connect_args(engine.url)
        self._options: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_SECONDS, **options}
        self._connection: asyncpg.Connection | None = None

    def handles(self, kind: type[WriteOp[Any]]) -> bool:
        return kind in _APPLIERS

    async def apply(self, kinds: Kinds) -> list[Sequence[Any]]:
        db = await self._connected()
        try:
            if len(kinds) == 1 and _one_statement(*kinds[0]):
                kind, ops = kinds[0]
                return [await _APPLIERS[kind](db, ops)]
            async with db.transaction():
                return [await _APPLIERS[kind](db, ops) for kind, ops in kinds]
        except BaseException:
            if db.is_closed():
                self._connection = None  # lost: the next batch connects again
            raise

    async def aclose(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def _connected(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(**self._options)
        return self._connection


def _one_statement(kind: type[WriteOp[Any]], ops: Sequence[WriteOp[Any]]) -> bool:
    if kind is FinishReply:
        return True
    if kind is OpenTurn:
        return len(turn_rounds(ops)) == 1  # type: ignore[arg-type]
    return False
