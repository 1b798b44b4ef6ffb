"""Usage: requests, tokens, errors and cost per day, key, end user and model.

Revision ID: 0006
Revises: 0003 (to become 0005 once the keys revision is merged)
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("end_user", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("key_alias", sa.String(128), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "end_user", "model", name="pk_usage"),
    )
    op.create_index("ix_usage_key_id_day", "usage", ["key_id", "day"])


def downgrade() -> None:
    op.drop_index("ix_usage_key_id_day", table_name="usage")
    op.drop_table("usage")
