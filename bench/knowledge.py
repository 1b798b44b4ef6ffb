"""Knowledge: ingest rate with the default embedder, and hybrid query latency at 10k and 100k chunks.

Ingest: documents of real prose (the standard library's docstrings) through the whole path
(parse, chunk, embed with WordLlama, write chunks, vectors and keywords), timed from upload to
`ready`: chunks per second. Latency: a collection filled to each size (chunks embedded by the
same embedder, written in bulk through the same index), then hybrid searches (vector top-N and
FTS5 / tsvector top-N, fused), p50 and p99 of the wall time, and this process's CPU time per
query (steadier than wall time on a shared machine; PostgreSQL's own CPU is not in it). SQLite
always; PostgreSQL with pgvector from the `pgserver` wheel when it is installed.

The chunks are the same docstrings many times over (a small vocabulary: every word is in
thousands of chunks), the hard case for the keyword half. To compare with another checkout, run
this file twice with `PYTHONPATH=<checkout>/src`.

    uv run python bench/knowledge.py [--sizes 10000,100000] [--queries 100] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))
from parley.knowledge.chunking import Chunk
from parley.knowledge.config import KnowledgeSettings
from parley.knowledge.service import KnowledgeService, standalone_knowledge
from parley.store import create_engine, migrate

QUERIES = [
    "how do I split a string with a regular expression",
    "create a directory and its parents",
    "serialize an object to JSON",
    "wait for the first task to complete",
    "count hashable items",
    "resolve a path to an absolute path",
    "environment variables of the process",
    "signature of a callable",
    "run a coroutine in another thread",
    "read the lines of a file",
]


def corpus() -> list[str]:
    import collections
    import json
    import os
    import pathlib
    import re

    modules = (os, re, json, pathlib, collections, asyncio, inspect, statistics, argparse)
    docs = [inspect.getdoc(m) or "" for module in modules for _, m in inspect.getmembers(module) if callable(m)]
    return [" ".join(d.split()) for d in docs if len(d) > 80]


@contextlib.asynccontextmanager
async def knowledge(url: str) -> AsyncIterator[KnowledgeService]:
    await migrate(url)
    engine = create_engine(url)
    try:
        async with standalone_knowledge(KnowledgeSettings(), engine) as service:
            await service.opened()
            yield service
    finally:
        await engine.dispose()


async def ingest_rate(url: str, paragraphs: int) -> tuple[int, float]:
    texts = corpus()
    document = "\n\n".join(f"{n}. {texts[n % len(texts)]}" for n in range(paragraphs)).encode()
    async with knowledge(url) as kb:
        collection = await kb.create_collection("ingest", None)
        started = time.perf_counter()
        added, _ = await kb.add_document(collection.id, None, document, title="docstrings", filename="d.txt")
        await kb.wait_idle()
        elapsed = time.perf_counter() - started
        done = await kb.catalog.document(collection.id, added.id)
        assert done.state == "ready", done.error
        return done.chunk_count, elapsed


async def fill(kb: KnowledgeService, collection_id: str, size: int) -> None:
    """`size` chunks: docstrings with numbered variations, embedded and written in bulk."""
    embedder, index = await kb.opened()
    record = await kb.catalog.collection(collection_id, None)
    texts = corpus()
    batch = 2000
    for start in range(0, size, batch):
        chunk_texts = [
            f"{texts[n % len(texts)]} (variant {n // len(texts)})" for n in range(start, min(size, start + batch))
        ]
        document, _ = await kb.catalog.add_document(
            {
                "id": f"kd_bench_{collection_id[3:15]}_{start}",
                "collection_id": collection_id,
                "title": f"part {start}",
                "uri": None,
                "media_type": "text/plain",
                "content_hash": f"{start:064d}",
                "size": 0,
                "content": None,
            }
        )
        ids = await kb.catalog.add_chunks(document, [Chunk(t, None, None) for t in chunk_texts])
        assert ids is not None
        vectors = await embedder.embed(chunk_texts)
        await index.add(record.vector_table, record.keyword_table, ids, chunk_texts, vectors)
        await kb.catalog.finish(document.id, len(ids))


async def latency(url: str, size: int, queries: int) -> tuple[float, float, float]:
    async with knowledge(url) as kb:
        collection = await kb.create_collection("latency", None)
        await fill(kb, collection.id, size)
        for query in QUERIES[:3]:  # warm up: caches, the embedder's first call
            await kb.retrieve(query, [collection.id], None)
        times = []
        cpu_started = time.process_time()
        for n in range(queries):
            started = time.perf_counter()
            found = await kb.retrieve(QUERIES[n % len(QUERIES)], [collection.id], None)
            times.append((time.perf_counter() - started) * 1000)
            assert found.passages
        cpu_ms = (time.process_time() - cpu_started) * 1000 / queries
        times.sort()
        return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))], cpu_ms


@contextlib.contextmanager
def pgvector_server(folder: Path) -> Iterator[str]:
    from pgserver.postgres_server import get_server

    server = get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


async def main(sizes: list[int], queries: int, backends: list[str], paragraphs: int) -> None:
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        # (removed afterwards: 100,000 chunks leave ~200 MB of SQLite files)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parley-bench-knowledge-")))
        for backend in backends:
            if backend == "sqlite":
                urls[backend] = f"sqlite:///{folder / 'k.db'}"
            else:
                urls[backend] = stack.enter_context(pgvector_server(folder))
        print("Ingest (whole path, default embedder WordLlama 256-d)")
        print(f"{'backend':<12}{'chunks':>8}{'seconds':>10}{'chunks/s':>10}")
        for backend, url in list(urls.items()):
            try:
                chunks, seconds = await ingest_rate(url, paragraphs)
            except Exception as exc:  # e.g. a pgvector build whose instructions this CPU lacks (SIGILL)
                print(f"{backend:<12}failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                del urls[backend]
                continue
            print(f"{backend:<12}{chunks:>8}{seconds:>10.2f}{chunks / seconds:>10.0f}")
        print("\nHybrid retrieval latency (embed query + vector top-50 + keyword top-50 + fusion)")
        print(f"{'backend':<12}{'chunks':>8}{'p50 ms':>10}{'p99 ms':>10}{'CPU ms':>10}")
        for size in sizes:
            for backend, url in urls.items():
                p50, p99, cpu_ms = await latency(url, size, queries)
                print(f"{backend:<12}{size:>8}{p50:>10.1f}{p99:>10.1f}{cpu_ms:>10.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--paragraphs", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.queries, args.backends.split(","), args.paragraphs))
