"""ConversationStore: conversations and their messages, kept in SQL (SQLite or PostgreSQL).

Every method is one transaction: it happens whole or not at all, and input the store won't keep
is refused before anything is written. Replies are saved in two steps, `start_assistant_message`
then `finish_message`, so a reply that fails or is cancelled part-way keeps what was produced.

Conversations are private to their owner (`Principal.owner`). The methods that read or write a
conversation take the caller's `owner`, stored with what it creates and applied as a filter in
every query; None filters nothing (the admin key, an open server with no end user named). A
conversation of another owner is, to the caller, one that doesn't exist: ConversationNotFound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from parley.events import Usage
from parley.models.base import ChatMessage, ToolCall
from parley.store import export, inputs
from parley.store.availability import Availability
from parley.store.direct_writes import direct_applier
from parley.store.engine import create_engine, writer
from parley.store.errors import (
    ConversationExists,
    ConversationNotFound,
    InvalidStoreInput,
    MessageNotFound,
    MessageNotStreaming,
)
from parley.store.history_cache import HistoryCache
from parley.store.migrator import migrate
from parley.store.records import (
    ConversationPage,
    ConversationRecord,
    ConversationSummary,
    FinalStatus,
    MessageRecord,
    RecentHistory,
    ReplyProgress,
    Role,
    TimingLike,
)
from parley.store.schema import ID_LENGTH, ROLES, ConversationRow, MessageRow, UTCDateTime
from parley.store.sqlite_reads import ConversationState, Window, history_reader
from parley.store.turn_writes import FinishReply, OpenedTurn, OpenTurn, SaveProgress
from parley.store.writer import MAX_BATCH, MAX_QUEUE, BatchWriter, WriteOp, locked

MAX_PAGE = 200
T = TypeVar("T")
INTERRUPTED = "interrupted: the server stopped before the reply finished"
_HISTORY_STATUSES = ("complete", "cancelled")


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


async def open_store(url: str | URL, *, run_migrations: bool = True) -> ConversationStore:
    """Connect to `url` (e.g. `sqlite:///data/parley.db`, `postgresql://user@host/db`), migrating first."""
    engine = create_engine(url)
    try:
        if run_migrations:
            await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return ConversationStore(engine)


class ConversationStore:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._reading = async_sessionmaker(engine, expire_on_commit=False)
        self._writing = async_sessionmaker(writer(engine), expire_on_commit=False)
        self._last_now = datetime.fromtimestamp(0, UTC)
        # SQLite has one writer at a time, and a writer kept waiting polls with growing sleeps:
        # this server's own writes queue here instead (other processes still meet the busy timeout).
        self._write_turn = asyncio.Lock() if self._dialect == "sqlite" else None
        self._availability = Availability(engine)
        # Recent histories kept in process; another server's writes are caught by the turn that
        # meets them (see turn_history).
        self._history: HistoryCache | None = HistoryCache()
        begin = writer(engine).begin
        lock = self._write_turn
        self._batches = BatchWriter(
            engine,
            transaction=(lambda: locked(lock, begin)) if lock is not None else begin,
            max_batch=max_batch,
            max_queue=max_queue,
            direct=direct_applier(engine, lock),
        )
        # A SQLite file's history windows: one thread hop through sqlite3 (else through SQLAlchemy).
        self._windows = history_reader(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def observe_writes(self, observe: Callable[[int, float], None]) -> None:
        """Tell `observe` of each batch of writes committed: (writes in it, seconds it took)."""
        self._batches.observe = observe

    @property
    def queued_writes(self) -> int:
        """Writes waiting for the writer (at most `max_queue`: beyond, writers wait)."""
        return self._batches.queued

    async def write(self, op: WriteOp[T]) -> T:
        """Apply `op` with the turns' writes: batched with them, in this store's order of writers."""
        return await self._batches.submit(op)

    async def aclose(self) -> None:
        """Apply the writes still queued, then close every connection."""
        async with contextlib.AsyncExitStack() as closing:  # each step runs, whatever the others raise
            closing.push_async_callback(self._engine.dispose)
            if self._windows is not None:
                closing.push_async_callback(self._windows.aclose)
            await self._batches.aclose()

    async def ping(self) -> None:
        """Raise StoreUnavailable if the database can't be reached."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            if (error := self._availability.failed(exc)) is None:
                raise
            raise error from exc

    # --- conversations --------------------------------------------------------------------------

    async def create_conversation(
        self,
        title: str | None = None,
        *,
        model: str | None = None,
        agent: str | None = None,
        conversation_id: str | None = None,
        owner: str | None = None,
    ) -> ConversationSummary:
        row = self._new_conversation(conversation_id, title=inputs.checked_title(title) if title is not None else None)
        row.model, row.agent = inputs.checked_name(model, "model"), inputs.checked_name(agent, "agent")
        row.owner = owner
        try:
            async with self._write() as session:
                session.add(row)
        except IntegrityError:
            raise ConversationExists(row.id) from None
        return _summary(row)

    async def get_or_create(
        self, conversation_id: str, *, model: str | None = None, agent: str | None = None, owner: str | None = None
    ) -> ConversationSummary:
        """The conversation with this id, created (empty) if there is none. Safe to race."""
        row = self._new_conversation(conversation_id)
        values = {
            "id": row.id,
            "model": inputs.checked_name(model, "model"),
            "agent": inputs.checked_name(agent, "agent"),
            "message_count": 0,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "owner": owner,
        }
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        async with self._write() as session:
            await session.execute(dialect_insert(ConversationRow).values(values).on_conflict_do_nothing())
            return _summary(await self._conversation(session, row.id, owner))

    async def list_conversations(
        self, limit: int = 20, cursor: str | None = None, *, owner: str | None = None
    ) -> ConversationPage:
        """Newest activity first. Pass `next_cursor` back as `cursor` for the next page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidStoreInput(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        order = (ConversationRow.updated_at.desc(), ConversationRow.id.desc())
        query = select(ConversationRow).order_by(*order).limit(limit + 1)
        if owner is not None:
            query = query.where(ConversationRow.owner == owner)
        if cursor is not None:
            moment, last_id = inputs.decode_cursor(cursor)
            key = tuple_(ConversationRow.updated_at, ConversationRow.id)
            query = query.where(key < tuple_(literal(moment, UTCDateTime()), literal(last_id)))
        async with self._read() as session:
            rows = list(await session.scalars(query))
        items = [_summary(row) for row in rows[:limit]]
        next_cursor = inputs.encode_cursor(items[-1]) if len(rows) > limit else None
        return ConversationPage(items, next_cursor)

    async def get_conversation(self, conversation_id: str, *, owner: str | None = None) -> ConversationRecord:
        """The conversation with all its messages, in order."""
        async with self._read() as session:
            row = await self._conversation(session, conversation_id, owner)
            messages = await session.execute(_messages_of(conversation_id))
            summary = _summary(row)
            fields = {field.name: getattr(summary, field.name) for field in dataclasses.fields(summary)}
            return ConversationRecord(**fields, messages=tuple(_message(m) for m in messages))

    async def history(self, conversation_id: str, *, owner: str | None = None) -> list[ChatMessage]:
        """The messages to send a model: finished ones (cancelled replies keep their partial text).

        Left out: replies still streaming, replies that failed, and empty replies; the tool calls
        of a reply cut short (they'd have no results to follow them).
        """
        if not inputs.ID_PATTERN.match(conversation_id):  # (e.g. a NUL, which PostgreSQL refuses to compare)
            raise ConversationNotFound(conversation_id)
        query = _messages_of(conversation_id).where(MessageRow.status.in_(_HISTORY_STATUSES))
        async with self._read() as session:
            if owner is not None:  # the conversation is checked before any of its messages is read
                await self._conversation(session, conversation_id, owner)
            rows = (await session.execute(query)).all()
            if not rows and owner is None:
                await self._conversation(session, conversation_id)
        seen = [
            (m.position, m.role, m.content, m.tool_calls, m.tool_call_id, m.status, m.steps)
            for m in map(_message, rows)
        ]
        return [message for _, message in _for_the_model_at(seen)]

    async def rename(self, conversation_id: str, title: str, *, owner: str | None = None) -> ConversationSummary:
        clean = inputs.checked_title(title)
        async with self._write() as session:
            row = await self._conversation(session, conversation_id, owner)
            row.title = clean
            return _summary(row)

    async def delete(self, conversation_id: str, *, owner: str | None = None) -> None:
        """Delete the conversation and (by the foreign key's cascade) all its messages."""
        statement = delete(ConversationRow).where(ConversationRow.id == conversation_id)
        if owner is not None:
            statement = statement.where(ConversationRow.owner == owner)
        async with self._write() as session:
            deleted = await session.execute(statement.returning(ConversationRow.id))
            if deleted.first() is None:
                raise ConversationNotFound(conversation_id)
        self._forget(conversation_id)

    async def export_json(self, conversation_id: str, *, owner: str | None = None) -> dict[str, Any]:
        return export.to_json(await self.get_conversation(conversation_id, owner=owner))

    async def export_markdown(self, conversation_id: str, *, owner: str | None = None) -> str:
        return export.to_markdown(await self.get_conversation(conversation_id, owner=owner))

    # --- messages -------------------------------------------------------------------------------

    async def append_message(
        self,
        conversation_id: str,
        role: Role,
        content: str,
        *,
        reasoning: str | None = None,
        tool_calls: Sequence[BaseModel | Mapping[str, Any]] | None = None,
        tool_call_id: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        message_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Add a finished message at the end; the first user message titles an untitled conversation."""
        if role not in ROLES:
            raise InvalidStoreInput(f"role must be one of {', '.join(ROLES)}; got {role!r}", param="role")
        row = MessageRow(
            role=role,
            content=inputs.clean_text(content),
            reasoning=inputs.clean_text_or_none(reasoning),
            tool_calls=inputs.plain_tool_calls(tool_calls),
            tool_call_id=inputs.clean_text_or_none(tool_call_id),
            model=inputs.checked_name(model, "model"),
            agent=inputs.checked_name(agent, "agent"),
            status="complete",
        )
        title = inputs.title_from(row.content) if role == "user" else None
        self._forget_all()  # (these older single writes are not fed to the history cache)
        return await self._add(conversation_id, row, message_id, title=title, owner=owner)

    async def start_assistant_message(
        self,
        conversation_id: str,
        *,
        model: str | None = None,
        agent: str | None = None,
        message_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Put an empty reply (status `streaming`) at the end, to fill in with `finish_message`.

        The conversation's model and agent become this reply's.
        """
        row = MessageRow(
            role="assistant",
            content="",
            model=inputs.checked_name(model, "model"),
            agent=inputs.checked_name(agent, "agent"),
            status="streaming",
        )
        self._forget_all()
        return await self._add(conversation_id, row, message_id, model=row.model, agent=row.agent, owner=owner)

    async def finish_message(
        self,
        message_id: str,
        *,
        content: str,
        reasoning: str | None = None,
        tool_calls: Sequence[BaseModel | Mapping[str, Any]] | None = None,
        usage: Usage | None = None,
        timing: TimingLike | None = None,
        finish_reason: str | None = None,
        status: FinalStatus = "complete",
        error: str | None = None,
    ) -> MessageRecord:
        """Record how a reply ended, with what it produced, whatever the outcome (once per reply)."""
        values = _finished_values(content, reasoning, tool_calls, usage, timing, finish_reason, status, error)
        now = self._now()
        self._forget_all()
        async with self._write() as session:
            owner = select(MessageRow.conversation_id).where(MessageRow.id == message_id).scalar_subquery()
            # The conversation row first, as append does: writers lock in one order, so never deadlock.
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == owner)
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
            finished = await session.execute(
                update(MessageRow)
                .where(MessageRow.id == message_id, MessageRow.status == "streaming")
                .values(values)
                .returning(*_MESSAGE_COLUMNS)
                .execution_options(synchronize_session=False)
            )
            row = finished.first()
            if row is None:
                current = await session.scalar(select(MessageRow.status).where(MessageRow.id == message_id))
                if current is None:
                    raise MessageNotFound(message_id)
                raise MessageNotStreaming(message_id, current)
            return _message(row)

    # --- a conversation turn: the hot path, through the batching writer --------------------------

    async def open_turn(
        self,
        conversation_id: str,
        content: str,
        *,
        model: str | None = None,
        agent: str | None = None,
        owner: str | None = None,
    ) -> OpenedTurn:
        """Add a user's message and an empty reply (`streaming`) to the conversation, creating it if
        new (for `owner`); returns once committed. The first user message titles an untitled
        conversation. Another owner's conversation is not found, and nothing is written."""
        self._checked_id(conversation_id)
        text = inputs.clean_text(content)
        op = OpenTurn(
            conversation_id=conversation_id,
            user_message_id=new_message_id(),
            reply_id=new_message_id(),
            content=text,
            title=inputs.title_from(text),
            model=inputs.checked_name(model, "model"),
            agent=inputs.checked_name(agent, "agent"),
            now=self._now(),
            owner=owner,
        )
        try:
            async with self._available():
                opened = await self._batches.submit(op)
        except BaseException:
            self._forget(conversation_id)
            raise
        if opened is None:
            raise ConversationNotFound(conversation_id)
        if self._history is not None:
            user = ChatMessage(role="user", content=text)
            self._history.opened(conversation_id, opened.user_position, opened.reply_id, user, opened.owner)
        return opened

    async def finish_reply(
        self,
        reply_id: str,
        conversation_id: str,
        *,
        content: str,
        reasoning: str | None = None,
        tool_calls: Sequence[BaseModel | Mapping[str, Any]] | None = None,
        usage: Usage | None = None,
        timing: TimingLike | None = None,
        finish_reason: str | None = None,
        status: FinalStatus = "complete",
        error: str | None = None,
        steps: Sequence[ChatMessage] = (),
        agent: str | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record how a reply opened by `open_turn` ended; returns once committed. Raises
        MessageNotStreaming if it had already ended (e.g. marked failed as abandoned).

        `steps`: an agent's tool calls and results that led to the reply; `agent`: the agent that
        gave it (another than the turn's after a handoff); `sources`: the passages it drew on."""
        values = _finished_values(content, reasoning, tool_calls, usage, timing, finish_reason, status, error)
        values["steps"] = [step.to_openai() for step in steps] or None
        values["agent"] = inputs.clean_text_or_none(agent, 128)
        values["sources"] = sources or None
        op = FinishReply(reply_id=reply_id, conversation_id=conversation_id, values=values, now=self._now())
        try:
            async with self._available():
                finished = await self._batches.submit(op)
        except BaseException:
            self._forget(conversation_id)
            raise
        if not finished:
            self._forget(conversation_id)
            raise MessageNotStreaming(reply_id, "finished")
        if self._history is not None:
            seen: list[ChatMessage] = []  # a failed reply is not shown to the model again
            if status in _HISTORY_STATUSES:
                seen = _model_messages(
                    "assistant", values["content"], values["tool_calls"], None, status, values["steps"]
                )
            self._history.finished(conversation_id, reply_id, seen)

    async def save_progress(self, progress: Sequence[ReplyProgress], alive: Sequence[str] = ()) -> None:
        """Save what replies still streaming have produced so far, all in one write.

        `alive`: replies with nothing new, whose `saved_at` is only brought up to date (so other
        servers can tell they are still being written). Replies no longer streaming are left as they are.
        """
        if not progress and not alive:
            return
        clean = [
            ReplyProgress(item.message_id, inputs.clean_text(item.content), inputs.clean_text_or_none(item.reasoning))
            for item in progress
        ]
        async with self._available():
            await self._batches.submit(SaveProgress(progress=clean, alive=list(alive), now=self._now()))

    async def recent_history(
        self, conversation_id: str, limit: int | None = None, *, owner: str | None = None
    ) -> list[ChatMessage]:
        """The newest `limit` messages to send a model (all with None), oldest first: as `history`,
        without reading what context fitting could never keep. A new conversation has none."""
        return (await self.turn_history(conversation_id, limit, owner=owner)).messages

    async def turn_history(
        self, conversation_id: str, limit: int | None = None, *, before: int | None = None, owner: str | None = None
    ) -> RecentHistory:
        """`recent_history`, with the position the conversation's next message takes as far as it
        knows. A turn whose message lands elsewhere (`open_turn`'s `user_position`) learns that
        another server wrote to the conversation meanwhile, and reads again, `before` its own.
        Another owner's conversation raises ConversationNotFound (a missing one has no history)."""
        if not inputs.ID_PATTERN.match(conversation_id):
            return RecentHistory([], 0)
        cache = self._history if before is None else None
        if cache is not None:
            if (kept := cache.get(conversation_id, limit, owner)) is not None:
                return kept
            cache.reading(conversation_id)
        try:
            async with self._available():
                read = await self._window(conversation_id, limit, _NO_POSITION if before is None else before, owner)
        except BaseException:
            if cache is not None:
                cache.read_failed(conversation_id)
            raise
        rows, state = read.rows, read.state
        if state is None or (owner is not None and state.owner != owner):
            if cache is not None:  # no such conversation (yet): its first turn starts the cache
                cache.read_failed(conversation_id)
            if state is None:
                return RecentHistory([], 0)
            raise ConversationNotFound(conversation_id)
        kept_pairs = _for_the_model_at(reversed(rows))
        messages = [message for _, message in kept_pairs]
        if cache is not None:
            whole = limit is None or len(rows) < limit
            positions = [position for position, _ in kept_pairs]
            cache.read(conversation_id, messages, positions, state.message_count, whole, state.owner)
        return RecentHistory(list(messages), state.message_count)

    async def _window(self, conversation_id: str, limit: int | None, before: int, owner: str | None) -> Window:
        """The newest `limit` messages a model sees (all with None) before `before`, newest first,
        with the conversation's (message_count, owner), as of one moment."""
        if self._windows is not None:
            return await self._windows.window(conversation_id, limit, before, owner)
        parameters = {"conversation": conversation_id, "newest": limit, "before": before, "owner": owner}
        statement = (_NEWEST if limit is not None else _ALL_NEWEST_FIRST)[owner is not None]
        async with self._engine.connect() as connection:
            rows = (await connection.execute(statement, parameters)).all()
            state = (await connection.execute(_CONVERSATION_STATE, parameters)).first()
        return Window(rows, None if state is None else ConversationState(state.message_count, state.owner))

    async def fail_interrupted(self, older_than: timedelta = timedelta(0)) -> int:
        """Mark replies left `streaming` by a server that stopped as failed, keeping the text saved
        so far; returns how many.

        Several servers sharing a database: pass `older_than` longer than a live reply can go
        unsaved (its server saves it every `reply_save_seconds` or so), so replies other servers
        are still writing are left alone.
        """
        cutoff = self._now() - older_than
        self._forget_all()
        last_saved = func.coalesce(MessageRow.saved_at, MessageRow.created_at)
        async with self._write() as session:
            result = await session.execute(
                update(MessageRow)
                .where(MessageRow.status == "streaming", last_saved <= cutoff)
                .values(status="failed", finish_reason="error", error=INTERRUPTED)
                .returning(MessageRow.id)
                .execution_options(synchronize_session=False)
            )
            return len(result.all())

    # --- availability ---------------------------------------------------------------------------

    async def readiness(self) -> str | None:
        """None when the store can serve; else why not ("database unreachable", "database schema
        missing", ...), naming no host or database. A missing or older schema is set up again in
        the background (at most every few seconds)."""
        return await self._availability.check()

    async def stop_repairs(self) -> None:
        """Stop waiting for a schema repair in progress (before `aclose`, when the server stops)."""
        await self._availability.aclose()

    # --- internals ------------------------------------------------------------------------------

    # A database that can't be used becomes StoreUnavailable (503) here, in _read and _write, for
    # every method; other errors pass unchanged. On success the cost is one attribute read.

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._available(), self._reading() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        async with self._available(), contextlib.AsyncExitStack() as stack:
            if self._write_turn is not None:
                await stack.enter_async_context(self._write_turn)
            session = await stack.enter_async_context(self._writing())
            await stack.enter_async_context(session.begin())
            yield session

    @contextlib.asynccontextmanager
    async def _available(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if (error := self._availability.failed(exc)) is None:
                raise
            raise error from exc
        if self._availability.down is not None:
            self._availability.recovered()

    def _now(self) -> datetime:
        """UTC now, strictly increasing within this store, so "newest first" never ties here."""
        now = datetime.now(UTC)
        if now <= self._last_now:
            now = self._last_now + timedelta(microseconds=1)
        self._last_now = now
        return now

    def _forget(self, conversation_id: str) -> None:
        if self._history is not None:
            self._history.drop(conversation_id)

    def _forget_all(self) -> None:
        if self._history is not None:
            self._history.clear()

    @staticmethod
    def _checked_id(conversation_id: str) -> None:
        if not inputs.ID_PATTERN.match(conversation_id):
            raise InvalidStoreInput(
                f"a conversation id is 1-{ID_LENGTH} letters, digits and . _ : - (starting with a letter or digit)",
                param="conversation_id",
            )

    def _new_conversation(self, conversation_id: str | None, title: str | None = None) -> ConversationRow:
        if conversation_id is None:
            conversation_id = new_conversation_id()
        else:
            self._checked_id(conversation_id)
        now = self._now()
        return ConversationRow(id=conversation_id, title=title, message_count=0, created_at=now, updated_at=now)

    async def _conversation(
        self, session: AsyncSession, conversation_id: str, owner: str | None = None
    ) -> ConversationRow:
        if owner is None:
            row = await session.get(ConversationRow, conversation_id)
        else:
            query = select(ConversationRow).where(ConversationRow.id == conversation_id, ConversationRow.owner == owner)
            row = await session.scalar(query)
        if row is None:
            raise ConversationNotFound(conversation_id)
        return row

    async def _add(
        self,
        conversation_id: str,
        row: MessageRow,
        message_id: str | None,
        *,
        title: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        owner: str | None = None,
    ) -> str:
        if message_id is not None and not inputs.ID_PATTERN.match(message_id):
            raise InvalidStoreInput("a message id is 1-128 letters, digits and . _ : -", param="message_id")
        row.id = message_id or new_message_id()
        row.conversation_id = conversation_id
        row.created_at = now = self._now()
        changes: dict[str, Any] = {"message_count": ConversationRow.message_count + 1, "updated_at": now}
        if title is not None:
            changes["title"] = func.coalesce(ConversationRow.title, title)
        if model is not None:
            changes["model"] = model
        if agent is not None:
            changes["agent"] = agent
        try:
            async with self._write() as session:
                # Locks the conversation's row until commit: appends to one conversation take turns,
                # across servers too, so positions never collide.
                count = await session.scalar(
                    update(ConversationRow)
                    .where(ConversationRow.id == conversation_id, *_owned_by(owner))
                    .values(changes)
                    .returning(ConversationRow.message_count)
                    .execution_options(synchronize_session=False)
                )
                if count is None:
                    raise ConversationNotFound(conversation_id)
                row.position = count - 1
                session.add(row)
        except IntegrityError:
            if message_id is None:
                raise
            raise InvalidStoreInput(f"message {message_id!r} already exists", param="message_id") from None
        return row.id


_MESSAGES = cast(Table, MessageRow.__table__)  # the table itself, for statements run many times over
# Messages are read as plain rows, not ORM objects: loading 1,000 takes a quarter of the time.
_MESSAGE_COLUMNS = tuple(column for column in MessageRow.__table__.columns if column.name != "saved_at")
if [column.name for column in _MESSAGE_COLUMNS] != [field.name for field in dataclasses.fields(MessageRecord)]:
    raise RuntimeError("MessageRecord's fields must follow the messages table's columns, in order")


_M = _MESSAGES.c
# What a model sees, newest first: one row a message (an empty reply, left out anyway, is not
# read), so a limit counts exactly the messages fitting may keep.
_ANY_OWNERS_NEWEST_FIRST = (
    select(_M.position, _M.role, _M.content, _M.tool_calls, _M.tool_call_id, _M.status, _M.steps)
    .where(
        _M.conversation_id == bindparam("conversation"),
        _M.status.in_(_HISTORY_STATUSES),
        _M.position < bindparam("before"),
        or_(
            _M.role != "assistant",
            _M.content != "",
            and_(_M.tool_calls.is_not(None), _M.status == "complete"),
            _M.steps.is_not(None),
        ),
    )
    .order_by(_M.position.desc())
)
# The same, reading nothing of a conversation that isn't the caller's.
_OWNED_NEWEST_FIRST = _ANY_OWNERS_NEWEST_FIRST.where(
    exists().where(ConversationRow.id == bindparam("conversation"), ConversationRow.owner == bindparam("owner"))
)
# Indexed by whether an owner filters: [no filter, filter].
_ALL_NEWEST_FIRST = (_ANY_OWNERS_NEWEST_FIRST, _OWNED_NEWEST_FIRST)
_NEWEST = tuple(statement.limit(bindparam("newest")) for statement in _ALL_NEWEST_FIRST)
_NO_POSITION = 2**31 - 1  # `before` when every position is wanted
_CONVERSATION_STATE = select(ConversationRow.message_count, ConversationRow.owner).where(
    ConversationRow.id == bindparam("conversation")
)


def _owned_by(owner: str | None) -> tuple[ColumnElement[bool], ...]:
    """The filter that keeps a caller to its own conversations (none for None)."""
    return () if owner is None else (ConversationRow.owner == owner,)


def _messages_of(conversation_id: str) -> Select[*tuple[Any, ...]]:
    return select(*_MESSAGE_COLUMNS).where(MessageRow.conversation_id == conversation_id).order_by(MessageRow.position)


def _summary(row: ConversationRow) -> ConversationSummary:
    return ConversationSummary(
        id=row.id,
        title=row.title,
        model=row.model,
        agent=row.agent,
        message_count=row.message_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner=row.owner,
    )


def _message(row: Row[*tuple[Any, ...]]) -> MessageRecord:
    return MessageRecord(*row)  # the columns come in the record's field order (checked above)


def _for_the_model_at(rows: Iterable[Sequence[Any]]) -> list[tuple[int, ChatMessage]]:
    """Stored messages (position, role, content, tool_calls, tool_call_id, status, steps) as a model
    sees them, with their positions (an agent's steps share their reply's)."""
    kept = []
    for position, role, content, tool_calls, tool_call_id, status, steps in rows:
        for message in _model_messages(role, content, tool_calls, tool_call_id, status, steps):
            kept.append((position, message))
    return kept


def _model_messages(
    role: Role,
    content: str,
    tool_calls: list[dict[str, Any]] | None,
    tool_call_id: str | None,
    status: str,
    steps: list[dict[str, Any]] | None,
) -> list[ChatMessage]:
    """A stored message as a model sees it: after the agent steps that led to it, if any (each a
    call with its result), and left out if empty. A reply cut short loses its own tool calls
    (they'd have no results to follow them)."""
    messages = [ChatMessage.model_validate(step) for step in steps] if steps else []
    if status != "complete":
        tool_calls = None
    if role == "assistant" and not content and not tool_calls:
        return messages
    if tool_calls:
        calls = [ToolCall.model_validate(call) for call in tool_calls]
        messages.append(ChatMessage(role=role, content=content, tool_calls=calls, tool_call_id=tool_call_id))
    else:  # checked when it was stored: built without validating again (a history can be 500 messages)
        messages.append(ChatMessage.model_construct(role=role, content=content, tool_call_id=tool_call_id))
    return messages


def _finished_values(
    content: str,
    reasoning: str | None,
    tool_calls: Sequence[BaseModel | Mapping[str, Any]] | None,
    usage: Usage | None,
    timing: TimingLike | None,
    finish_reason: str | None,
    status: FinalStatus,
    error: str | None,
) -> dict[str, Any]:
    """The columns a finished reply sets, checked and cleaned."""
    if status not in ("complete", "cancelled", "failed"):
        raise InvalidStoreInput(f"a reply ends complete, cancelled or failed; got {status!r}", param="status")
    return {
        "content": inputs.clean_text(content),
        "reasoning": inputs.clean_text_or_none(reasoning),
        "tool_calls": inputs.plain_tool_calls(tool_calls),
        "finish_reason": inputs.clean_text_or_none(finish_reason, 32),
        "status": status,
        "error": inputs.clean_text_or_none(error),
        "prompt_tokens": inputs.token_count(usage.prompt_tokens) if usage else None,
        "completion_tokens": inputs.token_count(usage.completion_tokens) if usage else None,
        "time_to_first_token_ms": timing.time_to_first_token_ms if timing else None,
        "total_ms": timing.total_ms if timing else None,
    }
