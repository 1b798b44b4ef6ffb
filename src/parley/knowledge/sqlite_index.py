"""The index on SQLite: sqlite-vec's vec0 tables for vectors, FTS5 for keywords.

Python's own sqlite3 may be built without extension loading, so the index goes through
sqlean.py (SQLite with extensions enabled), in worker threads: one connection writes (and reads
vectors into memory, where they are searched: vector_cache.py), one reads keywords.
It lives in a file of its own beside the store's (`parley.db` → `parley.knowledge.db`): two
copies of the SQLite library in one process must never open the same file, since each drops
the other's POSIX locks (sqlite.org/howtocorrupt.html, 2.2.1). Chunks stay in the store; the
index holds only their ids, vectors and words, and search reads chunks of `ready` documents.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from parley.knowledge.index import KEYWORD_RANK_BUDGET, KnowledgeUnavailable, informative_terms, query_terms
from parley.knowledge.vector_cache import VectorCache, VectorMatrix, nearest

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000


class _Connection:
    def __init__(self, path: Path) -> None:
        import sqlean  # type: ignore[import-untyped]
        import sqlite_vec

        self.db = sqlean.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.enable_load_extension(True)
        self.db.load_extension(sqlite_vec.loadable_path())
        self.db.enable_load_extension(False)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.lock = threading.Lock()

    def run(self, work: Callable[[Any], T]) -> T:
        with self.lock:
            return work(self.db)


def index_path(store_path: Path) -> Path:
    return store_path.with_name(f"{store_path.stem}.knowledge{store_path.suffix or '.db'}")


class SQLiteIndex:
    def __init__(self, store_path: Path) -> None:
        path = index_path(store_path)
        try:
            self._writer = _Connection(path)
            self._keyword_reader = _Connection(path)  # (keywords are read while vectors are searched)
        except ImportError as exc:
            raise KnowledgeUnavailable("knowledge needs the sqlean.py and sqlite-vec packages") from exc
        self._cache = VectorCache()  # vectors are searched in memory (vector_cache.py says why)

    async def _write(self, work: Callable[[Any], T]) -> T:
        def transaction(db: Any) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await asyncio.to_thread(self._writer.run, transaction)

    async def create(self, vector_table: str, keyword_table: str, dimension: int) -> None:
        def work(db: Any) -> None:
            db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {vector_table} "
                f"USING vec0(embedding float[{dimension}] distance_metric=cosine)"
            )
            db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {keyword_table} "
                "USING fts5(text, content='', contentless_delete=1, tokenize='porter unicode61')"
            )

        await self._write(work)

    async def add(
        self,
        vector_table: str,
        keyword_table: str,
        chunk_ids: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)

        def work(db: Any) -> None:
            _put_vectors(db, vector_table, chunk_ids, _blobs(matrix))
            db.executemany(
                f"INSERT INTO {keyword_table}(rowid, text) VALUES (?, ?)", zip(chunk_ids, texts, strict=True)
            )

        await self._write(work)
        self._cache.put(vector_table, chunk_ids, matrix)

    async def add_vectors(
        self, vector_table: str, chunk_ids: Sequence[int], vectors: Sequence[Sequence[float]]
    ) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)

        def work(db: Any) -> None:
            _put_vectors(db, vector_table, chunk_ids, _blobs(matrix))

        await self._write(work)
        self._cache.put(vector_table, chunk_ids, matrix)

    async def remove(self, vector_table: str, keyword_table: str, chunk_ids: Sequence[int]) -> None:
        rows = [(chunk_id,) for chunk_id in chunk_ids]

        def work(db: Any) -> None:
            db.executemany(f"DELETE FROM {vector_table} WHERE rowid = ?", rows)
            db.executemany(f"DELETE FROM {keyword_table} WHERE rowid = ?", rows)

        if rows:
            await self._write(work)
            self._cache.remove(vector_table, chunk_ids)

    async def drop(self, vector_table: str, keyword_table: str | None) -> None:
        def work(db: Any) -> None:
            db.execute(f"DROP TABLE IF EXISTS {vector_table}")
            if keyword_table is not None:
                db.execute(f"DROP TABLE IF EXISTS {keyword_table}")

        await self._write(work)
        self._cache.drop(vector_table)

    async def nearest(self, vector_table: str, vector: Sequence[float], n: int) -> list[tuple[int, float]]:
        def work() -> list[tuple[int, float]]:
            return nearest(self._writer.run(lambda db: self._matrix(db, vector_table)), vector, n)

        return await asyncio.to_thread(work)

    def _matrix(self, db: Any, vector_table: str) -> VectorMatrix:
        """The table's vectors in memory, read from the index on first use or after another process
        wrote to it. Runs on the writer's connection, under its lock, so no write of ours is missed."""
        version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._cache.version:
            self._cache.clear()
            self._cache.version = version
        matrix = self._cache.get(vector_table)
        if matrix is None:
            rows = db.execute(f"SELECT rowid, embedding FROM {vector_table}").fetchall()
            dimension = len(rows[0][1]) // 4 if rows else 0
            matrix = self._cache.load(vector_table, [row[0] for row in rows], [row[1] for row in rows], dimension)
        return matrix

    async def keyword(self, keyword_table: str, collection_id: str, query: str, n: int) -> list[int]:
        terms = query_terms(query)
        if not terms:
            return []

        def work(db: Any) -> list[int]:
            counts = [(term, _matches(db, keyword_table, _phrase(term))) for term in terms]
            match = " OR ".join(_phrase(term) for term in informative_terms(counts))
            # (the inner LIMIT bounds the rows ranked when even the rarest word is in most chunks)
            rows = db.execute(
                f"SELECT rowid FROM (SELECT rowid, rank FROM {keyword_table} WHERE {keyword_table} MATCH ? LIMIT ?) "
                "ORDER BY rank LIMIT ?",
                (match, KEYWORD_RANK_BUDGET, n),
            ).fetchall()
            return [int(row[0]) for row in rows]

        return await asyncio.to_thread(self._keyword_reader.run, work)

    async def aclose(self) -> None:
        for connection in (self._writer, self._keyword_reader):
            await asyncio.to_thread(connection.run, lambda db: db.close())


def _put_vectors(db: Any, vector_table: str, chunk_ids: Sequence[int], blobs: Sequence[bytes]) -> None:
    # Replaced, not duplicated: a re-embedding and a new document's worker may both write one.
    db.executemany(f"DELETE FROM {vector_table} WHERE rowid = ?", [(chunk_id,) for chunk_id in chunk_ids])
    db.executemany(f"INSERT INTO {vector_table}(rowid, embedding) VALUES (?, ?)", zip(chunk_ids, blobs, strict=True))


def _phrase(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _matches(db: Any, keyword_table: str, phrase: str) -> int:
    """How many chunks hold the phrase: a walk of its list of rows in the index, no ranking."""
    row = db.execute(f"SELECT count(*) FROM {keyword_table} WHERE {keyword_table} MATCH ?", (phrase,)).fetchone()
    return int(row[0])


def _blobs(matrix: Any) -> list[bytes]:
    return [row.tobytes() for row in matrix]
