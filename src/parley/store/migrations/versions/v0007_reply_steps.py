"""An agent's steps kept with its reply: messages.steps, the tool calls and results that led to it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("steps", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    # (SQLite drops a column in place since 3.35; batch mode would copy the whole table)
    op.drop_column("messages", "steps")
