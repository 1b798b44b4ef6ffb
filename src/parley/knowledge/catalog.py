"""Collections, documents and chunks in the store's tables (SQLAlchemy Core, SQLite or PostgreSQL).

Every read of a collection is filtered by owner (None: a caller who sees everything), so
another owner's collection is, to the caller, one that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.events import PendingSource
from parley.knowledge.chunking import Chunk
from parley.knowledge.records import ChunkHit, CollectionNotFound, CollectionRecord, DocumentNotFound, DocumentRecord
from parley.store.engine import writer
from parley.store.schema import KnowledgeChunkRow, KnowledgeCollectionRow, KnowledgeDocumentRow

C = cast(Table, KnowledgeCollectionRow.__table__)
D = cast(Table, KnowledgeDocumentRow.__table__)
K = cast(Table, KnowledgeChunkRow.__table__)
_DOCUMENT_COLUMNS = [c for c in D.c if c.name != "content"]


def _now() -> datetime:
    return datetime.now(UTC)


def _collection(row: Any) -> CollectionRecord:
    return CollectionRecord(**{name: getattr(row, name) for name in CollectionRecord.__slots__})


def _document(row: Any) -> DocumentRecord:
    return DocumentRecord(**{name: getattr(row, name) for name in DocumentRecord.__slots__})


class Catalog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = writer(engine)

    # --- collections -----------------------------------------------------------------------------

    async def add_collection(self, record: CollectionRecord) -> None:
        async with self._writer.begin() as connection:
            values = {name: getattr(record, name) for name in CollectionRecord.__slots__}
            await connection.execute(insert(C).values(**values))

    async def collection(self, collection_id: str, owner: str | None) -> CollectionRecord:
        async with self._engine.connect() as connection:
            return await self._collection(connection, collection_id, owner)

    async def _collection(self, connection: AsyncConnection, collection_id: str, owner: str | None) -> CollectionRecord:
        query = select(C).where(C.c.id == collection_id)
        if owner is not None:
            query = query.where(C.c.owner == owner)
        row = (await connection.execute(query)).first()
        if row is None:
            raise CollectionNotFound(collection_id)
        return _collection(row)

    async def collections(self, owner: str | None) -> list[CollectionRecord]:
        query = select(C).order_by(C.c.created_at, C.c.id)
        if owner is not None:
            query = query.where(C.c.owner == owner)
        async with self._engine.connect() as connection:
            return [_collection(row) for row in await connection.execute(query)]

    async def any_collection(self) -> bool:
        async with self._engine.connect() as connection:
            return (await connection.execute(select(C.c.id).limit(1))).first() is not None

    async def all_collections(self) -> list[CollectionRecord]:
        return await self.collections(None)

    async def delete_collection(self, collection_id: str, owner: str | None) -> CollectionRecord:
        async with self._writer.begin() as connection:
            record = await self._collection(connection, collection_id, owner)
            await connection.execute(delete(K).where(K.c.collection_id == collection_id))
            await connection.execute(delete(D).where(D.c.collection_id == collection_id))
            await connection.execute(delete(C).where(C.c.id == collection_id))
        return record

    async def swap_vectors(
        self, collection_id: str, old_table: str, new_table: str, embedder: str, dimension: int
    ) -> bool:
        """Point the collection at its new vectors, unless it changed meanwhile (deleted, swapped)."""
        async with self._writer.begin() as connection:
            result = await connection.execute(
                update(C)
                .where(C.c.id == collection_id, C.c.vector_table == old_table)
                .values(vector_table=new_table, embedder=embedder, dimension=dimension)
            )
            return bool(result.rowcount)

    # --- documents -------------------------------------------------------------------------------

    async def add_document(self, values: dict[str, Any]) -> tuple[DocumentRecord, bool]:
        """The new document (queued), or the collection's document with the same content and False."""
        now = _now()
        row = {**values, "state": "queued", "progress": None, "error": None, "created_at": now, "updated_at": now}
        try:
            async with self._writer.begin() as connection:
                await connection.execute(insert(D).values(**row))
        except IntegrityError:
            query = select(*_DOCUMENT_COLUMNS).where(
                D.c.collection_id == values["collection_id"], D.c.content_hash == values["content_hash"]
            )
            async with self._engine.connect() as connection:
                existing = (await connection.execute(query)).first()
            if existing is None:  # (the conflict was something else, or the twin was deleted since)
                raise
            return _document(existing), False
        return await self.document(values["collection_id"], values["id"]), True

    async def document(self, collection_id: str, document_id: str) -> DocumentRecord:
        query = select(*_DOCUMENT_COLUMNS).where(D.c.id == document_id, D.c.collection_id == collection_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise DocumentNotFound(document_id)
        return _document(row)

    async def documents(self, collection_id: str) -> list[DocumentRecord]:
        query = select(*_DOCUMENT_COLUMNS).where(D.c.collection_id == collection_id).order_by(D.c.created_at, D.c.id)
        async with self._engine.connect() as connection:
            return [_document(row) for row in await connection.execute(query)]

    async def delete_document(self, collection_id: str, document_id: str) -> list[int]:
        """Delete the document and its chunks; return the chunk ids (for the index)."""
        async with self._writer.begin() as connection:
            found = await connection.execute(
                select(D.c.id).where(D.c.id == document_id, D.c.collection_id == collection_id)
            )
            if found.first() is None:
                raise DocumentNotFound(document_id)
            ids = [row[0] for row in await connection.execute(select(K.c.id).where(K.c.document_id == document_id))]
            await connection.execute(delete(K).where(K.c.document_id == document_id))
            await connection.execute(delete(D).where(D.c.id == document_id))
        return ids

    async def unfinished(self) -> list[str]:
        query = select(D.c.id).where(D.c.state.in_(("queued", "indexing"))).order_by(D.c.created_at)
        async with self._engine.connect() as connection:
            return [row[0] for row in await connection.execute(query)]

    async def work_of(self, document_id: str) -> tuple[DocumentRecord, bytes | None] | None:
        query = select(*_DOCUMENT_COLUMNS, D.c.content).where(D.c.id == document_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else (_document(row), row.content)

    async def set_state(
        self, document_id: str, state: str, *, progress: float | None = None, error: str | None = None
    ) -> bool:
        values: dict[str, Any] = {"state": state, "progress": progress, "error": error, "updated_at": _now()}
        if state == "failed":
            values["content"] = None
        async with self._writer.begin() as connection:
            result = await connection.execute(update(D).where(D.c.id == document_id).values(**values))
            return bool(result.rowcount)

    async def chunk_ids(self, document_id: str) -> list[int]:
        async with self._engine.connect() as connection:
            return [row[0] for row in await connection.execute(select(K.c.id).where(K.c.document_id == document_id))]

    async def remove_chunks(self, document_id: str) -> None:
        async with self._writer.begin() as connection:
            await connection.execute(delete(K).where(K.c.document_id == document_id))

    async def add_chunks(self, document: DocumentRecord, chunks: Sequence[Chunk]) -> list[int] | None:
        """Insert the chunks (not searchable until the document is ready); None if it was deleted."""
        rows = [
            {
                "document_id": document.id,
                "collection_id": document.collection_id,
                "position": position,
                "text": piece.text,
                "page": piece.page,
                "heading": piece.heading,
            }
            for position, piece in enumerate(chunks)
        ]
        async with self._writer.begin() as connection:
            if (await connection.execute(select(D.c.id).where(D.c.id == document.id))).first() is None:
                return None
            if not rows:
                return []
            result = await connection.execute(insert(K).returning(K.c.id, sort_by_parameter_order=True), rows)
            return [row[0] for row in result]

    async def finish(self, document_id: str, chunk_count: int) -> bool:
        async with self._writer.begin() as connection:
            result = await connection.execute(
                update(D)
                .where(D.c.id == document_id)
                .values(
                    state="ready", progress=1.0, error=None, content=None, chunk_count=chunk_count, updated_at=_now()
                )
            )
            return bool(result.rowcount)

    # --- search ----------------------------------------------------------------------------------

    async def hits(self, chunk_ids: Sequence[int]) -> dict[int, ChunkHit]:
        """The chunks with these ids whose documents are ready (others: indexing, or deleted)."""
        if not chunk_ids:
            return {}
        query = (
            select(K.c.id, K.c.collection_id, K.c.document_id, K.c.page, K.c.text, D.c.title, D.c.uri)
            .join(D, D.c.id == K.c.document_id)
            .where(K.c.id.in_(list(chunk_ids)), D.c.state == "ready")
        )
        async with self._engine.connect() as connection:
            rows = await connection.execute(query)
            return {
                row.id: ChunkHit(row.id, row.collection_id, row.document_id, row.title, row.uri, row.page, row.text)
                for row in rows
            }

    async def pending(self, collection_ids: Sequence[str]) -> list[PendingSource]:
        query = (
            select(D.c.id, D.c.title, D.c.state, D.c.progress)
            .where(D.c.collection_id.in_(list(collection_ids)), D.c.state.in_(("queued", "indexing")))
            .order_by(D.c.created_at)
        )
        async with self._engine.connect() as connection:
            return [
                PendingSource(row.id, row.title, row.state, row.progress) for row in await connection.execute(query)
            ]

    async def chunk_texts(self, collection_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        query = (
            select(K.c.id, K.c.text)
            .where(K.c.collection_id == collection_id, K.c.id > after)
            .order_by(K.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            return [(row[0], row[1]) for row in await connection.execute(query)]

    async def chunk_count(self, collection_id: str) -> int:
        async with self._engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(K).where(K.c.collection_id == collection_id)
            )
            return int(count or 0)
