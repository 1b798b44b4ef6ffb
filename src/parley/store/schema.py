"""The tables, as typed ORM classes. Alembic's revisions (in `migrations/`) create them; a test
checks the two agree."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ROLES = ("system", "developer", "user", "assistant", "tool")
STATUSES = ("complete", "cancelled", "failed", "streaming")
ID_LENGTH = 128
NAME_LENGTH = 128

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no zone: it stores UTC, read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store keeps aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 - SQLAlchemy's own class attribute


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # Listing newest first: walked backwards, with the id breaking ties (and as the keyset cursor).
        Index("ix_conversations_updated_at_id", "updated_at", "id"),
        # One owner's listing, newest first (revision 0004), walked like the one above.
        Index("ix_conversations_owner_updated_at_id", "owner", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    agent: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    # Kept with each message added: the next message's position, and the count for listings.
    message_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]  # last activity: a message added or finished
    # Revision 0004: whose it is (`Principal.owner`); NULL: made by a caller who sees everything.
    owner: Mapped[str | None] = mapped_column(Text)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Also the index that loads a conversation's messages in order.
        UniqueConstraint("conversation_id", "position"),
        CheckConstraint(_one_of("role", ROLES), name="role"),
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        # Replies still streaming, found after a crash (revision 0002). Small: rows leave it when finished.
        Index(
            "ix_messages_streaming",
            "created_at",
            sqlite_where=text("status = 'streaming'"),
            postgresql_where=text("status = 'streaming'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("conversations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    reasoning: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    tool_call_id: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    agent: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    time_to_first_token_ms: Mapped[float | None] = mapped_column(Double)
    total_ms: Mapped[float | None] = mapped_column(Double)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)  # revision 0002
    created_at: Mapped[datetime]
    # Revision 0003: when a server last wrote this reply while it streamed; stale means its server died.
    saved_at: Mapped[datetime | None]
    # Revision 0007: an agent's steps before this reply (assistant tool calls and tool results, in
    # the OpenAI message shape), kept with the reply they led to.
    steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    # Revision 0008: the passages the reply drew on, as its `sources` event listed them.
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))


class UsageRow(Base):
    """What callers used, per day, key, end user and model (revision 0006); '' where there is none."""

    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_key_id_day", "key_id", "day"),)

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # UTC
    key_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    end_user: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    model: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    key_alias: Mapped[str] = mapped_column(String(NAME_LENGTH))  # the key's name when last used
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)  # replies that failed
    cost: Mapped[float] = mapped_column(Double)  # from the models' configured prices


class ApiKeyRow(Base):
    """An API key (revision 0005): only its keyed hash is kept, with a short prefix to find it by."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_prefix", "prefix"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 of the key, hex
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger)
    max_streams: Mapped[int | None] = mapped_column(Integer)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)
    models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))  # None: every model
    agents: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))  # None: every agent
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


# --- knowledge (revision 0009) -------------------------------------------------------------------
# The vector and keyword indexes are not here: their tables depend on the embedder's dimension
# and on the backend (sqlite-vec + FTS5, pgvector + tsvector), so knowledge creates them at run time.
DOCUMENT_STATES = ("queued", "indexing", "ready", "failed")


class KnowledgeCollectionRow(Base):
    __tablename__ = "knowledge_collections"
    __table_args__ = (Index("ix_knowledge_collections_owner", "owner"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    owner: Mapped[str | None] = mapped_column(Text)  # as conversations.owner
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    embedder: Mapped[str] = mapped_column(Text)  # the embedder's name its vectors come from
    dimension: Mapped[int] = mapped_column(Integer)
    vector_table: Mapped[str] = mapped_column(String(64))  # swapped when re-embedded
    keyword_table: Mapped[str] = mapped_column(String(64))
    top_k: Mapped[int] = mapped_column(Integer)
    score_threshold: Mapped[float] = mapped_column(Double)
    vector_weight: Mapped[float] = mapped_column(Double)
    keyword_weight: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime]


class KnowledgeDocumentRow(Base):
    __tablename__ = "knowledge_documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "content_hash"),  # the same content is indexed once
        CheckConstraint(_one_of("state", DOCUMENT_STATES), name="state"),
        Index("ix_knowledge_documents_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    collection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("knowledge_collections.id", ondelete="CASCADE")
    )
    title: Mapped[str] = mapped_column(Text)
    uri: Mapped[str | None] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(String(NAME_LENGTH))
    content_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the content, hex
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes | None] = mapped_column(LargeBinary)  # kept until indexed: a restart resumes
    state: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class KnowledgeChunkRow(Base):
    __tablename__ = "knowledge_chunks"
    __table_args__ = (Index("ix_knowledge_chunks_document_id", "document_id"),)

    # An integer key: the rowid of the chunk's entries in the vector and keyword indexes.
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("knowledge_documents.id", ondelete="CASCADE")
    )
    collection_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)
    heading: Mapped[str | None] = mapped_column(Text)
