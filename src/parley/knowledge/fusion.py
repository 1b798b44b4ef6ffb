"""Reciprocal-rank fusion of the vector and keyword rankings, and the optional reranker hook.

A chunk's fused score is Σ weight / (k + rank) over the lists it appears in (rank from 1),
divided by what a chunk first in every list would get: 1.0 is the best possible, and the
collection's score threshold is on that scale. Ranks, not raw scores, are fused, so cosine
similarities and BM25 scores never need to be made comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from parley.events import SourcePassage


class Reranker(Protocol):
    """Reorders (and may drop) the fused passages; e.g. a cross-encoder. None: fusion's order."""

    async def rerank(self, query: str, passages: Sequence[SourcePassage]) -> list[SourcePassage]: ...


def fuse(rankings: Sequence[tuple[Sequence[int], float]], k: int) -> list[tuple[int, float]]:
    """(ids best first, weight) per list → (id, normalised score), best first."""
    best = sum(weight for ids, weight in rankings if weight > 0) / (k + 1)
    if best <= 0:
        return []
    scores: dict[int, float] = {}
    for ids, weight in rankings:
        if weight <= 0:
            continue
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (k + rank)
    fused = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [(chunk_id, score / best) for chunk_id, score in fused]
