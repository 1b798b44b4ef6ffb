"""The vectors of each searched collection kept in memory, for exact search in one matrix product.

sqlite-vec searches by brute force in its own loop, a few ms per 10,000 chunks: 100,000 took
hundreds of ms here. A float32 matrix and numpy do the same exact search in a few ms.
It costs the vectors' size in memory (100,000 chunks of 256 floats: 100 MB) for the collections
searched since the server started.

The matrix follows this process's own writes as they commit. Another process writing the same
index (`parley ingest` beside a running server) is noticed through SQLite's `data_version` on
the writing connection, which changes only when some other connection commits: the matrices
are then read again from the index on their next search.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(slots=True)
class VectorMatrix:
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]  # one unit-length row per id


class VectorCache:
    """Collections' vectors by table; thread-safe (index work runs in worker threads)."""

    def __init__(self) -> None:
        self._tables: dict[str, VectorMatrix] = {}
        self._lock = threading.Lock()
        self.version: int | None = None  # the writer's data_version the matrices agree with

    def get(self, table: str) -> VectorMatrix | None:
        with self._lock:
            return self._tables.get(table)

    def load(self, table: str, ids: Sequence[int], blobs: Sequence[bytes], dimension: int) -> VectorMatrix:
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension).copy()
        matrix = VectorMatrix(np.asarray(ids, dtype=np.int64), vectors)
        with self._lock:
            self._tables[table] = matrix
        return matrix

    def put(self, table: str, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        """Rows added or replaced (only for a table already loaded: others load on first search)."""
        with self._lock:
            matrix = self._tables.get(table)
            if matrix is None:
                return
            keep = ~np.isin(matrix.ids, np.asarray(ids, dtype=np.int64))
            self._tables[table] = VectorMatrix(
                np.concatenate([matrix.ids[keep], np.asarray(ids, dtype=np.int64)]),
                np.concatenate([matrix.vectors[keep], vectors]),
            )

    def remove(self, table: str, ids: Sequence[int]) -> None:
        with self._lock:
            matrix = self._tables.get(table)
            if matrix is None:
                return
            keep = ~np.isin(matrix.ids, np.asarray(ids, dtype=np.int64))
            self._tables[table] = VectorMatrix(matrix.ids[keep], matrix.vectors[keep])

    def drop(self, table: str) -> None:
        with self._lock:
            self._tables.pop(table, None)

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()


def nearest(matrix: VectorMatrix, vector: Sequence[float], n: int) -> list[tuple[int, float]]:
    """The `n` rows most similar to `vector` (cosine: the rows and the query are unit length)."""
    if not len(matrix.ids) or n <= 0:
        return []
    query = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(query))
    # numpy's own loop, not BLAS: the product is bound by memory, and OpenBLAS's threads spin
    # while they wait, which doubled the CPU time and the latency on two busy cores.
    scores = np.einsum("ij,j->i", matrix.vectors, query / norm if norm else query)
    if n < len(scores):
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top])]
    else:
        top = np.argsort(-scores)
    return [(int(matrix.ids[i]), float(scores[i])) for i in top]
