"""Failure details: messages.error, and an index of replies still streaming (to find after a crash).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STREAMING = sa.text("status = 'streaming'")


def upgrade() -> None:
    op.add_column("messages", sa.Column("error", sa.Text(), nullable=True))
    op.create_index(
        "ix_messages_streaming",
        "messages",
        ["created_at"],
        sqlite_where=_STREAMING,
        postgresql_where=_STREAMING,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_streaming", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("error")
