"""The writes of a conversation turn, as batched ops for the store's writer (`store.writer`).

A whole batch of turns costs a handful of statements, whatever its size:

- `OpenTurn`: one multi-row upsert of the turns' conversations (created if new, with their
  owner; their message counts raised by two a turn, which hands each turn its two positions) and
  one executemany insert of the user messages and the empty replies (`streaming`). The upsert
  touches only a conversation the turn's owner may see: another owner's row is left alone and not
  returned, and that turn writes nothing (its result is None).
- `SaveProgress`: one executemany update of replies still streaming.
- `FinishReply`: one executemany update of the conversations' activity, one of the replies, and
  one select telling which replies were still streaming (those are the ones finished).

Rows are locked in one order (conversations by id, before their messages), so servers sharing
a PostgreSQL database never deadlock on each other's batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.store.records import ReplyProgress
from parley.store.schema import ConversationRow, MessageRow
from parley.store.writer import WriteOp

CONVERSATIONS = cast(Table, ConversationRow.__table__)
MESSAGES = cast(Table, MessageRow.__table__)


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    conversation_id: str
    user_message_id: str
    reply_id: str
    user_position: int  # the reply's is the next
    owner: str | None  # the conversation's owner, as stored


@dataclass(frozen=True, slots=True)
class OpenTurn(WriteOp[OpenedTurn | None]):
    """A user's message and the empty reply to it, at the end of their conversation (made if new).

    `owner`: the caller's (`Principal.owner`), stored with a new conversation; an existing one is
    written only if it is the caller's (None: any conversation). Its result: None when not.
    """

    order: ClassVar[int] = 0
    conversation_id: str
    user_message_id: str
    reply_id: str
    content: str
    title: str | None
    model: str | None
    agent: str | None
    now: datetime
    owner: str | None

    @classmethod
    async def apply_all(cls, connection: AsyncConnection, ops: Sequence[OpenTurn]) -> Sequence[OpenedTurn | None]:
        upsert = _UPSERTS[connection.dialect.name]
        opened: dict[int, OpenedTurn] = {}
        messages: list[dict[str, Any]] = []
        for turns in turn_rounds(ops):
            returned = await connection.execute(upsert, conversation_rows(turns))
            counts: dict[str, tuple[int, str | None]] = {row[0]: (row[1], row[2]) for row in returned}
            for op, position, owner in placed_turns(turns, counts):
                opened[id(op)] = OpenedTurn(op.conversation_id, op.user_message_id, op.reply_id, position, owner)
                messages.append(_message(op, op.user_message_id, position, "user", op.content, "complete"))
                messages.append(_message(op, op.reply_id, position + 1, "assistant", "", "streaming"))
        if messages:
            await connection.execute(_INSERT_MESSAGES, messages)
        return [opened.get(id(op)) for op in ops]


Counts = dict[str, tuple[int, str | None]]  # a conversation's message count after the upsert, and owner


def conversation_rows(turns: dict[str, list[OpenTurn]]) -> list[dict[str, Any]]:
    """One round's conversations as upserted, in id order (the order rows are locked in)."""
    return [
        {
            "id": conversation_id,
            "title": mine[0].title,
            "model": mine[-1].model,
            "agent": mine[-1].agent,
            "message_count": 2 * len(mine),
            "created_at": mine[0].now,
            "updated_at": mine[-1].now,
            "owner": mine[0].owner,
        }
        for conversation_id, mine in sorted(turns.items())
    ]


def placed_turns(turns: dict[str, list[OpenTurn]], counts: Counts) -> list[tuple[OpenTurn, int, str | None]]:
    """Each turn the upsert let through, with its user message's position and its conversation's owner.
    A conversation the upsert did not return (another owner's) places none of its turns."""
    placed = []
    for conversation_id, mine in turns.items():
        if conversation_id not in counts:
            continue
        count, owner = counts[conversation_id]
        position = count - 2 * len(mine)
        for op in mine:
            placed.append((op, position, owner))
            position += 2
    return placed


def turn_rounds(ops: Sequence[OpenTurn]) -> list[dict[str, list[OpenTurn]]]:
    """The ops grouped by conversation, in as many upserts as it takes for each to hold one owner's
    turns per conversation (one upsert can't write a row twice). Almost always one: a second comes
    only when two owners' turns name one id in one batch (one of them is refused). It locks rows
    out of the one order, so it could meet another server's batch in a deadlock, which PostgreSQL
    breaks by failing a transaction: that batch is then applied op by op, and nothing is lost."""
    rounds: list[dict[str, list[OpenTurn]]] = [{}]
    for op in ops:
        for turns in rounds:
            mine = turns.get(op.conversation_id)
            if mine is None:
                turns[op.conversation_id] = [op]
                break
            if mine[0].owner == op.owner:
                mine.append(op)
                break
        else:
            rounds.append({op.conversation_id: [op]})
    return rounds


def _upsert(insert: Callable[[Table], Any]) -> Any:
    """Conversations made if new, their message counts raised, the new counts returned: one
    statement, built once, that SQLAlchemy sends for a batch's rows as one multi-row insert.

    An existing conversation is updated (and returned) only if the turn's owner may see it: the
    owner check rides in the upsert itself, costing no round trip."""
    statement = insert(CONVERSATIONS)
    current, new = CONVERSATIONS.c, statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[current.id],
        set_={
            "message_count": current.message_count + new.message_count,
            "updated_at": new.updated_at,
            "title": func.coalesce(current.title, new.title),
            "model": func.coalesce(new.model, current.model),
            "agent": func.coalesce(new.agent, current.agent),
        },
        where=or_(new.owner.is_(None), current.owner == new.owner),
    ).returning(current.id, current.message_count, current.owner)


# Statements built once: constructing them per batch showed in the turn path's profile.
_UPSERTS = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}
_INSERT_MESSAGES = MESSAGES.insert()


def _message(op: OpenTurn, message_id: str, position: int, role: str, content: str, status: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "conversation_id": op.conversation_id,
        "position": position,
        "role": role,
        "content": content,
        "reasoning": None,
        "tool_calls": None,
        "tool_call_id": None,
        "model": op.model if role == "assistant" else None,
        "agent": op.agent,
        "prompt_tokens": None,
        "completion_tokens": None,
        "time_to_first_token_ms": None,
        "total_ms": None,
        "finish_reason": None,
        "status": status,
        "error": None,
        "created_at": op.now,
        "saved_at": None,
    }


@dataclass(frozen=True, slots=True)
class SaveProgress(WriteOp[None]):
    """What replies still streaming have produced so far; `alive` ones only marked as still written."""

    order: ClassVar[int] = 1
    progress: Sequence[ReplyProgress]
    alive: Sequence[str]
    now: datetime

    @classmethod
    async def apply_all(cls, connection: AsyncConnection, ops: Sequence[SaveProgress]) -> Sequence[None]:
        progress = [
            {"reply_id": item.message_id, "new_content": item.content, "new_reasoning": item.reasoning, "now": op.now}
            for op in ops
            for item in op.progress
        ]
        if progress:
            await connection.execute(_SAVE_PROGRESS, progress)
        alive = [{"reply_id": reply_id, "now": op.now} for op in ops for reply_id in op.alive]
        if alive:
            await connection.execute(_MARK_ALIVE, alive)
        return [None] * len(ops)


@dataclass(frozen=True, slots=True)
class FinishReply(WriteOp[bool]):
    """How a reply ended, with what it produced. Its result: False if the reply was not streaming
    (already finished, or marked failed as abandoned), and so was left as it was."""

    order: ClassVar[int] = 2
    reply_id: str
    conversation_id: str
    values: dict[str, Any]  # FINISHED_COLUMNS' values
    now: datetime

    @classmethod
    async def apply_all(cls, connection: AsyncConnection, ops: Sequence[FinishReply]) -> Sequence[bool]:
        activity = [{"conversation": op.conversation_id, "now": op.now} for op in sorted(ops, key=_by_conversation)]
        await connection.execute(_TOUCH_CONVERSATIONS, activity)
        await connection.execute(
            _FINISH_REPLIES,
            [
                {"reply_id": op.reply_id, "now": op.now} | {f"new_{c}": op.values[c] for c in FINISHED_COLUMNS}
                for op in ops
            ],
        )
        # A reply finished here carries its op's moment in saved_at: nothing else writes that moment.
        marks = await connection.execute(_FINISHED_MARKS, {"ids": [op.reply_id for op in ops]})
        finished = {(reply_id, saved_at) for reply_id, saved_at in marks}
        return [(op.reply_id, op.now) in finished for op in ops]


def _by_conversation(op: FinishReply) -> str:
    return op.conversation_id


FINISHED_COLUMNS = (
    "content",
    "reasoning",
    "tool_calls",
    "finish_reason",
    "status",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "time_to_first_token_ms",
    "total_ms",
    "steps",
    "agent",
    "sources",
)
_LIVE = MESSAGES.c
_STREAMING = (_LIVE.id == bindparam("reply_id"), _LIVE.status == "streaming")
_SAVE_PROGRESS = (
    update(MESSAGES)
    .where(*_STREAMING)
    .values(content=bindparam("new_content"), reasoning=bindparam("new_reasoning"), saved_at=bindparam("now"))
)
_MARK_ALIVE = update(MESSAGES).where(*_STREAMING).values(saved_at=bindparam("now"))
_TOUCH_CONVERSATIONS = (
    update(CONVERSATIONS).where(CONVERSATIONS.c.id == bindparam("conversation")).values(updated_at=bindparam("now"))
)
_FINISH_REPLIES = (
    update(MESSAGES)
    .where(*_STREAMING)
    .values({column: bindparam(f"new_{column}") for column in FINISHED_COLUMNS} | {"saved_at": bindparam("now")})
)
_FINISHED_MARKS = select(_LIVE.id, _LIVE.saved_at).where(
    _LIVE.id.in_(bindparam("ids", expanding=True)), _LIVE.status != "streaming"
)
