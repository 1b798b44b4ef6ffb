"""The search index's seam: vectors and keywords per collection, on SQLite or PostgreSQL.

Chunks themselves live in `knowledge_chunks` (the store's tables); an index holds, per
collection, a vector table (one row per chunk id) and keyword entries, both maintained as
documents are added and removed, never rebuilt for a query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from parley.errors import ParleyError

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TERMS = 64
# Ranking (BM25) costs per matching chunk, a few µs each: a question with a word found in a third
# of a 100,000-chunk collection would rank 30,000 chunks. The keyword list ranks by the query's
# rarer words, up to about this many matches (informative_terms), and never ranks more than this.
KEYWORD_RANK_BUDGET = 4000
# Words too common to tell passages apart: matching them only makes the keyword list slower
# (every chunk has them) and noisier. Questions are full of them ("how do I ...").
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "do",
        "does",
        "did",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "not",
        "of",
        "on",
        "or",
        "our",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


class KnowledgeUnavailable(ParleyError):
    """The database can't hold the index (PostgreSQL without pgvector, SQLite without sqlite-vec)."""

    status_code = 503
    error_type = "server_error"
    code = "knowledge_unavailable"


class SearchIndex(Protocol):
    async def create(self, vector_table: str, keyword_table: str, dimension: int) -> None: ...

    async def add(
        self,
        vector_table: str,
        keyword_table: str,
        chunk_ids: Sequence[int],
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
    ) -> None: ...

    async def add_vectors(
        self, vector_table: str, chunk_ids: Sequence[int], vectors: Sequence[Sequence[float]]
    ) -> None: ...

    async def remove(self, vector_table: str, keyword_table: str, chunk_ids: Sequence[int]) -> None: ...

    async def drop(self, vector_table: str, keyword_table: str | None) -> None: ...

    async def nearest(self, vector_table: str, vector: Sequence[float], n: int) -> list[tuple[int, float]]:
        """The `n` chunk ids nearest the (unit) vector, with their cosine similarity, best first."""
        ...

    async def keyword(self, keyword_table: str, collection_id: str, query: str, n: int) -> list[int]:
        """The `n` chunk ids that best match the query's words, best first."""
        ...

    async def aclose(self) -> None: ...


def query_terms(query: str) -> list[str]:
    """The query's words, lower-cased, once each, without stop words (OR-ed: any may match)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word in STOP_WORDS:
            continue
        if len(seen) >= MAX_QUERY_TERMS:
            break
        seen.setdefault(word, None)
    return list(seen)


def informative_terms(document_counts: Sequence[tuple[str, int]], budget: int = KEYWORD_RANK_BUDGET) -> list[str]:
    """The rarest terms (by how many chunks hold each) whose matches together stay within `budget`;
    at least the rarest one. Common words tell chunks apart least (BM25 gives them the least
    weight) and cost the most to rank, so they are the ones left out."""
    chosen: list[str] = []
    matches = 0
    for term, count in sorted(document_counts, key=lambda item: item[1]):
        if chosen and matches + count > budget:
            break
        chosen.append(term)
        matches += count
    return chosen


def table_name(prefix: str, tag: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,40}", tag):
        raise ValueError("table tags are hex")
    return f"{prefix}_{tag}"
