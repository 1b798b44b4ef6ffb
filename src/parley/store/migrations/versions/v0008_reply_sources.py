"""The passages a reply drew on: messages.sources, as its `sources` event listed them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("sources", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "sources")
