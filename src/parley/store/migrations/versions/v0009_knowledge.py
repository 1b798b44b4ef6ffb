"""Knowledge: collections, their documents (with the ingestion state) and the documents' chunks.

The vector and keyword indexes are created at run time (their shape depends on the embedder's
dimension and the backend's extensions): this revision needs no extension, pgvector included.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "knowledge_collections",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("embedder", sa.Text(), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("vector_table", sa.String(64), nullable=False),
        sa.Column("keyword_table", sa.String(64), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("score_threshold", sa.Double(), nullable=False),
        sa.Column("vector_weight", sa.Double(), nullable=False),
        sa.Column("keyword_weight", sa.Double(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_index("ix_knowledge_collections_owner", "knowledge_collections", ["owner"])
    op.create_table(
        "knowledge_documents",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column(
            "collection_id",
            sa.String(128),
            sa.ForeignKey(
                "knowledge_collections.id",
                ondelete="CASCADE",
                name="fk_knowledge_documents_collection_id_knowledge_collections",
            ),
            nullable=False,
        ),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.UniqueConstraint("collection_id", "content_hash", name="uq_knowledge_documents_collection_id_content_hash"),
        sa.CheckConstraint("state IN ('queued', 'indexing', 'ready', 'failed')", name="ck_knowledge_documents_state"),
    )
    op.create_index("ix_knowledge_documents_state", "knowledge_documents", ["state"])
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column(
            "document_id",
            sa.String(128),
            sa.ForeignKey(
                "knowledge_documents.id", ondelete="CASCADE", name="fk_knowledge_chunks_document_id_knowledge_documents"
            ),
            nullable=False,
        ),
        sa.Column("collection_id", sa.String(128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("heading", sa.Text(), nullable=True),
    )
    op.create_index("ix_knowledge_chunks_document_id", "knowledge_chunks", ["document_id"])


def downgrade() -> None:
    op.drop_table("knowledge_chunks")
    op.drop_table("knowledge_documents")
    op.drop_table("knowledge_collections")
