"""KnowledgeService: collections, documents and hybrid retrieval (the `KnowledgeBase` chat uses).

Created in the app's lifespan; `start()` opens the embedder and the index in the background (the
server answers at once), resumes unfinished documents and re-embeds collections whose embedder
changed. Until then, knowledge calls wait; if the database can't hold the index, they answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from parley.events import SourcePassage
from parley.knowledge.base import Embedder, Retrieval
from parley.knowledge.catalog import Catalog
from parley.knowledge.config import KnowledgeSettings
from parley.knowledge.embedders import SharedEmbedder
from parley.knowledge.fusion import Reranker, fuse
from parley.knowledge.index import KnowledgeUnavailable, SearchIndex, table_name
from parley.knowledge.ingestion import Ingestion, vector_table_for
from parley.knowledge.parsing import check, media_type_of
from parley.knowledge.records import ChunkHit, CollectionRecord, DocumentRecord, IngestQueueFull
from parley.store.inputs import clean_text
from parley.store.urls import sqlite_path

SearchMode = Literal["hybrid", "vector", "keyword"]


class KnowledgeService:
    def __init__(
        self,
        settings: KnowledgeSettings,
        engine: AsyncEngine,
        embedder: SharedEmbedder,
        *,
        reranker: Reranker | None = None,
    ) -> None:
        self.settings = settings
        self._embedder = embedder  # shared with /v1/embeddings; closed by its owner
        self._engine = engine
        self.catalog = Catalog(engine)
        self._reranker = reranker
        self._opened: asyncio.Future[tuple[Embedder, SearchIndex]] = asyncio.get_running_loop().create_future()
        self._starting: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self.ingestion: Ingestion | None = None

    def start(self) -> None:
        self._starting = asyncio.create_task(self._start(), name="knowledge-start")

    async def _start(self) -> None:
        # A server with no collections loads the embedder when knowledge is first used, not at
        # every start; one with collections opens at once (to resume and re-embed).
        if not await self.catalog.any_collection():
            await self._wanted.wait()
        try:
            index = await _open_index(self._engine)
            embedder = await self._embedder.get()
        except KnowledgeUnavailable as exc:
            self._opened.set_exception(exc)
            return
        except Exception as exc:
            self._opened.set_exception(KnowledgeUnavailable("the embedder could not be loaded", detail=repr(exc)))
            raise
        self.ingestion = Ingestion(self.settings, self.catalog, index, embedder)
        self._opened.set_result((embedder, index))
        await self.ingestion.start()

    async def opened(self) -> tuple[Embedder, SearchIndex]:
        self._wanted.set()
        return await asyncio.shield(self._opened)

    async def wait_idle(self) -> None:
        """Until every queued document is indexed (for the CLI and tests)."""
        await self.opened()
        assert self.ingestion is not None
        await self.ingestion.idle()

    async def aclose(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        if self.ingestion is not None:
            await self.ingestion.aclose()
        # (`exception()` also marks a failure as seen: no "exception was never retrieved" at exit)
        if self._opened.done() and not self._opened.cancelled() and self._opened.exception() is None:
            _, index = self._opened.result()
            await index.aclose()
        elif not self._opened.done():
            self._opened.cancel()

    # --- collections -----------------------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        owner: str | None,
        *,
        top_k: int | None = None,
        score_threshold: float = 0.0,
        vector_weight: float = 1.0,
        keyword_weight: float = 1.0,
    ) -> CollectionRecord:
        embedder, index = await self.opened()
        collection_id = f"kc_{uuid.uuid4().hex}"
        record = CollectionRecord(
            id=collection_id,
            name=clean_text(name),
            owner=owner,
            embedder=embedder.name,
            dimension=embedder.dimension,
            vector_table=vector_table_for(collection_id, embedder.name),
            keyword_table=table_name("kfts", uuid.uuid4().hex),
            top_k=top_k or self.settings.top_k,
            score_threshold=score_threshold,
            vector_weight=vector_weight,
            keyword_weight=keyword_weight,
            created_at=datetime.now(UTC),
        )
        await index.create(record.vector_table, record.keyword_table, record.dimension)
        await self.catalog.add_collection(record)
        return record

    async def collection(self, collection_id: str, owner: str | None) -> CollectionRecord:
        await self.opened()
        return await self.catalog.collection(collection_id, owner)

    async def collections(self, owner: str | None) -> list[CollectionRecord]:
        await self.opened()
        return await self.catalog.collections(owner)

    async def delete_collection(self, collection_id: str, owner: str | None) -> None:
        _, index = await self.opened()
        record = await self.catalog.delete_collection(collection_id, owner)
        await index.drop(record.vector_table, record.keyword_table)

    async def check_collections(self, collection_ids: Sequence[str], owner: str | None) -> None:
        await self.opened()
        for collection_id in collection_ids:
            await self.catalog.collection(collection_id, owner)

    # --- documents -------------------------------------------------------------------------------

    async def add_document(
        self,
        collection_id: str,
        owner: str | None,
        content: bytes,
        *,
        title: str,
        filename: str | None = None,
        declared_type: str | None = None,
        uri: str | None = None,
    ) -> tuple[DocumentRecord, bool]:
        """Store the document and queue it; answers at once. (record, False) for content already there."""
        await self.opened()
        await self.catalog.collection(collection_id, owner)
        assert self.ingestion is not None
        if self.ingestion.full():
            raise IngestQueueFull("too many documents are waiting to be indexed; try again later")
        media_type = media_type_of(filename, declared_type, content)
        await asyncio.to_thread(check, content, media_type)
        document, created = await self.catalog.add_document(
            {
                "id": f"kd_{uuid.uuid4().hex}",
                "collection_id": collection_id,
                "title": clean_text(title[:500]),
                "uri": uri,
                "media_type": media_type,
                "content_hash": hashlib.sha256(content).hexdigest(),
                "size": len(content),
                "content": content,
            }
        )
        if created:
            self.ingestion.enqueue(document.id)
        return document, created

    async def documents(self, collection_id: str, owner: str | None) -> list[DocumentRecord]:
        await self.collection(collection_id, owner)
        return await self.catalog.documents(collection_id)

    async def document(self, collection_id: str, document_id: str, owner: str | None) -> DocumentRecord:
        await self.collection(collection_id, owner)
        return await self.catalog.document(collection_id, document_id)

    async def delete_document(self, collection_id: str, document_id: str, owner: str | None) -> None:
        _, index = await self.opened()
        record = await self.catalog.collection(collection_id, owner)
        chunk_ids = await self.catalog.delete_document(collection_id, document_id)
        await index.remove(record.vector_table, record.keyword_table, chunk_ids)

    # --- retrieval -------------------------------------------------------------------------------

    async def retrieve(
        self, query: str, collection_ids: Sequence[str], owner: str | None, *, top_k: int | None = None
    ) -> Retrieval:
        return await self.search(query, collection_ids, owner, top_k=top_k)

    async def search(
        self,
        query: str,
        collection_ids: Sequence[str],
        owner: str | None,
        *,
        top_k: int | None = None,
        mode: SearchMode = "hybrid",
    ) -> Retrieval:
        embedder, index = await self.opened()
        query = clean_text(query)
        collections = [await self.catalog.collection(cid, owner) for cid in dict.fromkeys(collection_ids)]
        # (read while the index is searched: it doesn't depend on the search)
        pending = asyncio.ensure_future(self.catalog.pending([c.id for c in collections]))
        try:
            # A collection still being re-embedded keeps vectors of another model: keywords only, until the swap.
            comparable = [c for c in collections if c.embedder == embedder.name and mode != "keyword"]
            vector = (await embedder.embed([query]))[0] if comparable and query.strip() else None
            n = self.settings.candidates
            fused: list[tuple[CollectionRecord, list[tuple[int, float]]]] = []
            for record in collections:
                search_vectors = vector is not None and record in comparable
                nearest, keyword = await asyncio.gather(
                    index.nearest(record.vector_table, vector, n) if search_vectors and vector else _nothing(),
                    _nothing() if mode == "vector" else index.keyword(record.keyword_table, record.id, query, n),
                )
                weights = (
                    record.vector_weight if mode != "keyword" else 0.0,
                    record.keyword_weight if mode != "vector" else 0.0,
                )
                ranking = fuse([([i for i, _ in nearest], weights[0]), (keyword, weights[1])], self.settings.rrf_k)
                fused.append((record, [(cid, score) for cid, score in ranking if score >= record.score_threshold]))
            found, hits = await self._best_ready(fused, top_k)
            found.sort(key=lambda item: -item[0])
            limit = top_k or max((c.top_k for c in collections), default=self.settings.top_k)
            passages = [
                SourcePassage(
                    index=position,
                    document_id=hits[cid].document_id,
                    title=hits[cid].title,
                    uri=hits[cid].uri,
                    page=hits[cid].page,
                    chunk_id=str(cid),
                    text=hits[cid].text,
                    score=round(score, 6),
                )
                for position, (score, cid) in enumerate(found[:limit], start=1)
            ]
            if self._reranker is not None and passages:
                reranked = await self._reranker.rerank(query, passages)
                passages = [_renumbered(p, i) for i, p in enumerate(reranked, start=1)]
        except BaseException:
            pending.cancel()
            raise
        return Retrieval(passages=passages, pending=await pending)

    async def _best_ready(
        self, fused: list[tuple[CollectionRecord, list[tuple[int, float]]]], top_k: int | None
    ) -> tuple[list[tuple[float, int]], dict[int, ChunkHit]]:
        """Each collection's best `top_k` candidates whose documents are ready, with their chunks.

        Chunks are read for the head of each ranking first (most candidates are ready), and for the
        rest only where the head did not yield enough: a search reads a few chunks, not all 100."""
        head = 3
        hits = await self.catalog.hits(
            [cid for record, ranking in fused for cid, _ in ranking[: head * (top_k or record.top_k)]]
        )
        short = [
            cid
            for record, ranking in fused
            if sum(cid in hits for cid, _ in ranking) < (top_k or record.top_k)
            for cid, _ in ranking[head * (top_k or record.top_k) :]
        ]
        if short:
            hits.update(await self.catalog.hits(short))
        found: list[tuple[float, int]] = []
        for record, ranking in fused:
            found.extend([(score, cid) for cid, score in ranking if cid in hits][: top_k or record.top_k])
        return found, hits


async def _nothing() -> list[Any]:
    return []


def _renumbered(passage: SourcePassage, index: int) -> SourcePassage:
    return SourcePassage(
        index,
        passage.document_id,
        passage.title,
        passage.uri,
        passage.page,
        passage.chunk_id,
        passage.text,
        passage.score,
    )


async def _open_index(engine: AsyncEngine) -> SearchIndex:
    if engine.dialect.name == "sqlite":
        from parley.knowledge.sqlite_index import SQLiteIndex

        path = sqlite_path(engine.url)
        if path is None:
            raise KnowledgeUnavailable("knowledge needs a SQLite database file (not an in-memory database)")
        return await asyncio.to_thread(SQLiteIndex, path)
    from parley.knowledge.pg_index import PostgresIndex

    return await PostgresIndex.open(engine)


@contextlib.asynccontextmanager
async def standalone_knowledge(settings: KnowledgeSettings, engine: AsyncEngine) -> AsyncIterator[KnowledgeService]:
    """A started knowledge service with an embedder of its own, closed afterwards (the CLI, tests, benches)."""
    embedder = SharedEmbedder(settings.embedder)
    service = KnowledgeService(settings, engine, embedder)
    service.start()
    try:
        yield service
    finally:
        await service.aclose()
        await embedder.aclose()
