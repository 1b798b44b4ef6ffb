"""Private conversations: conversations.owner, the caller that made each one.

NULL for every conversation made before (and for those made later by a caller who sees
everything: the admin key, or a server running open with no end user named), so existing
conversations stay visible to exactly the callers who saw them before: those who see all.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("conversations", sa.Column("owner", sa.Text(), nullable=True))
    op.create_index("ix_conversations_owner_updated_at_id", "conversations", ["owner", "updated_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_owner_updated_at_id", table_name="conversations")
    # A plain ALTER TABLE on SQLite too (3.35+): batch mode would copy the table and drop the
    # original, and dropping it cascades to every message.
    op.drop_column("conversations", "owner")
