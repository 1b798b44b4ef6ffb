"""Conversations kept in SQL: SQLite by default, PostgreSQL for several servers."""

from parley.store.conversations import ConversationStore, new_conversation_id, new_message_id, open_store
from parley.store.engine import create_engine
from parley.store.errors import (
    ConversationExists,
    ConversationNotFound,
    DatabaseURLError,
    InvalidStoreInput,
    MessageNotFound,
    MessageNotStreaming,
)
from parley.store.inputs import title_from
from parley.store.migrator import current_revision, downgrade, head_revision, migrate
from parley.store.records import (
    ConversationPage,
    ConversationRecord,
    ConversationSummary,
    FinalStatus,
    MessageRecord,
    RecentHistory,
    ReplyProgress,
    Role,
    Status,
    TimingLike,
)
from parley.store.urls import async_url, default_database_url

__all__ = [
    "ConversationExists",
    "ConversationNotFound",
    "ConversationPage",
    "ConversationRecord",
    "ConversationStore",
    "ConversationSummary",
    "DatabaseURLError",
    "FinalStatus",
    "InvalidStoreInput",
    "MessageNotFound",
    "MessageNotStreaming",
    "MessageRecord",
    "RecentHistory",
    "ReplyProgress",
    "Role",
    "Status",
    "TimingLike",
    "async_url",
    "create_engine",
    "current_revision",
    "default_database_url",
    "downgrade",
    "head_revision",
    "migrate",
    "new_conversation_id",
    "new_message_id",
    "open_store",
    "title_from",
]
