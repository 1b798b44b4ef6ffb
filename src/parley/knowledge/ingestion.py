"""Background ingestion: a bounded queue of document ids, worker tasks, and re-embedding.

A document's state lives in its row: `queued` → `indexing` (with progress) → `ready` or
`failed` (with the reason). Parsing, chunking and embedding run in threads, never on the event
loop. Its content stays in the row until it is indexed, so a restart finds `queued` and
`indexing` documents and indexes them again from the start (their partial chunks removed).
Chunks become searchable in one step: retrieval reads only chunks of `ready` documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence

from parley.errors import ParleyError
from parley.knowledge.base import Embedder
from parley.knowledge.catalog import Catalog
from parley.knowledge.chunking import Chunk, TokenCounter, approximate_tokens, chunk
from parley.knowledge.config import KnowledgeSettings
from parley.knowledge.index import SearchIndex, table_name
from parley.knowledge.parsing import Section, parse
from parley.knowledge.records import CollectionNotFound, CollectionRecord, DocumentRecord
from parley.store.inputs import clean_text

log = logging.getLogger(__name__)
EMBED_BATCH = 256  # chunks embedded and written per step (progress moves per step)


def vector_table_for(collection_id: str, embedder_name: str) -> str:
    """The collection's vector table for an embedder: a re-embedding writes a new one beside the old."""
    return table_name("kvec", hashlib.sha256(f"{collection_id}\0{embedder_name}".encode()).hexdigest()[:24])


class Ingestion:
    def __init__(self, settings: KnowledgeSettings, catalog: Catalog, index: SearchIndex, embedder: Embedder) -> None:
        self._settings = settings
        self._catalog = catalog
        self._index = index
        self._embedder = embedder
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=settings.ingest_queue)
        self._tasks: list[asyncio.Task[None]] = []
        counter = getattr(embedder, "count_tokens", None)
        self._count: TokenCounter = counter if callable(counter) else approximate_tokens

    async def start(self) -> None:
        for number in range(self._settings.ingest_workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"knowledge-ingest-{number}"))
        self._tasks.append(asyncio.create_task(self._reembed_all(), name="knowledge-reembed"))
        for document_id in await self._catalog.unfinished():  # left by a server that stopped
            await self._queue.put(document_id)

    def full(self) -> bool:
        return self._queue.full()

    def enqueue(self, document_id: str) -> None:
        self._queue.put_nowait(document_id)

    async def idle(self) -> None:
        await self._queue.join()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _work(self) -> None:
        while True:
            document_id = await self._queue.get()
            try:
                await self._index_document(document_id)
            except asyncio.CancelledError:
                raise
            except ParleyError as exc:
                await self._catalog.set_state(document_id, "failed", error=exc.message)
            except Exception:
                if await self._catalog.work_of(document_id) is None:
                    # Deleted meanwhile, maybe with its collection and index tables: nothing failed.
                    log.info("document %s was deleted while it was being indexed", document_id)
                else:
                    log.exception("indexing document %s failed", document_id)
                    await self._catalog.set_state(document_id, "failed", error="indexing failed (see the server log)")
            finally:
                self._queue.task_done()

    async def _index_document(self, document_id: str) -> None:
        work = await self._catalog.work_of(document_id)
        if work is None:
            return  # deleted while queued
        document, content = work
        try:
            collection = await self._catalog.collection(document.collection_id, None)
        except CollectionNotFound:
            return
        if content is None:
            await self._catalog.set_state(document_id, "failed", error="the document's content was not kept")
            return
        await self._catalog.set_state(document_id, "indexing", progress=0.0)
        earlier = await self._catalog.chunk_ids(document_id)  # from an interrupted run
        if earlier:
            await self._index.remove(self._target(collection), collection.keyword_table, earlier)
            await self._catalog.remove_chunks(document_id)
        chunks = await asyncio.to_thread(self._chunks, content, document.media_type)
        if not chunks:
            await self._catalog.set_state(document_id, "failed", error="no text found in the document")
            return
        ids = await self._catalog.add_chunks(document, chunks)
        if ids is None:
            return  # deleted meanwhile
        await self._embed_into(collection, document, ids, [c.text for c in chunks])

    def _chunks(self, content: bytes, media_type: str) -> list[Chunk]:
        sections = [
            Section(clean_text(s.text), s.heading and clean_text(s.heading), s.page) for s in parse(content, media_type)
        ]
        return list(
            chunk(
                sections,
                self._count,
                self._settings.chunk_tokens,
                min(self._settings.chunk_overlap_tokens, self._settings.chunk_tokens // 2),
            )
        )

    def _target(self, collection: CollectionRecord) -> str:
        return vector_table_for(collection.id, self._embedder.name)

    async def _embed_into(
        self, collection: CollectionRecord, document: DocumentRecord, ids: Sequence[int], texts: Sequence[str]
    ) -> None:
        target = self._target(collection)
        if target != collection.vector_table:  # being re-embedded: new vectors go to the new table
            await self._index.create(target, collection.keyword_table, self._embedder.dimension)
        written: list[int] = []
        for start in range(0, len(ids), EMBED_BATCH):
            batch_ids, batch_texts = ids[start : start + EMBED_BATCH], texts[start : start + EMBED_BATCH]
            vectors = await self._embedder.embed(batch_texts)
            await self._index.add(target, collection.keyword_table, batch_ids, batch_texts, vectors)
            written.extend(batch_ids)
            progress = min(0.99, len(written) / len(ids))
            if not await self._catalog.set_state(document.id, "indexing", progress=progress):
                await self._index.remove(target, collection.keyword_table, written)  # deleted while indexing
                return
        if not await self._catalog.finish(document.id, len(ids)):
            await self._index.remove(target, collection.keyword_table, written)

    # --- re-embedding ----------------------------------------------------------------------------

    async def _reembed_all(self) -> None:
        for collection in await self._catalog.all_collections():
            if collection.embedder != self._embedder.name:
                try:
                    await self.reembed(collection)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("re-embedding collection %s failed; it keeps its old vectors", collection.id)

    async def reembed(self, collection: CollectionRecord) -> None:
        """Embed every chunk into a new vector table, then point the collection at it in one update."""
        target = self._target(collection)
        log.info("re-embedding collection %s: %s -> %s", collection.id, collection.embedder, self._embedder.name)
        await self._index.drop(target, None)  # (a run a restart interrupted starts over)
        await self._index.create(target, collection.keyword_table, self._embedder.dimension)
        after = 0
        while page := await self._catalog.chunk_texts(collection.id, after, EMBED_BATCH):
            ids = [chunk_id for chunk_id, _ in page]
            vectors = await self._embedder.embed([text for _, text in page])
            await self._index.add_vectors(target, ids, vectors)
            after = ids[-1]
        swapped = await self._catalog.swap_vectors(
            collection.id, collection.vector_table, target, self._embedder.name, self._embedder.dimension
        )
        await self._index.drop(collection.vector_table if swapped else target, None)
