"""A small, real knowledge base for chat tests: in-memory collections ranked by word overlap.

A test implementation of the `KnowledgeBase` protocol (not a mock): it owns collections, keeps
them private to their owner, ranks passages by how many of the query's words they share, and
reports documents still being indexed, so chat's citing path can be tested before (and apart
from) the real, hybrid-search knowledge base.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.errors import NotFound
from parley.events import PendingSource, SourcePassage
from parley.knowledge.base import Retrieval

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    return {word.casefold() for word in _WORD.findall(text) if len(word) > 2}


@dataclass
class Passage:
    document_id: str
    title: str
    text: str
    page: int | None = None
    uri: str | None = None


@dataclass
class Collection:
    owner: str | None
    passages: list[Passage] = field(default_factory=list)
    pending: list[PendingSource] = field(default_factory=list)


class WordOverlapKnowledge:
    def __init__(self, top_k: int = 5) -> None:
        self.collections: dict[str, Collection] = {}
        self.queries: list[str] = []  # every query retrieved with, in order
        self._top_k = top_k

    def add(self, collection_id: str, passages: Sequence[Passage], owner: str | None = None) -> Collection:
        collection = self.collections.setdefault(collection_id, Collection(owner))
        collection.passages.extend(passages)
        return collection

    async def check_collections(self, collection_ids: Sequence[str], owner: str | None) -> None:
        for collection_id in collection_ids:
            collection = self.collections.get(collection_id)
            if collection is None or (owner is not None and collection.owner != owner):
                raise NotFound(f"collection {collection_id!r} not found", code="collection_not_found")

    async def retrieve(
        self, query: str, collection_ids: Sequence[str], owner: str | None, *, top_k: int | None = None
    ) -> Retrieval:
        await self.check_collections(collection_ids, owner)
        self.queries.append(query)
        asked = words(query)
        scored: list[tuple[float, str, int, Passage]] = []
        pending: list[PendingSource] = []
        for collection_id in collection_ids:
            collection = self.collections[collection_id]
            pending += collection.pending
            for number, passage in enumerate(collection.passages):
                overlap = len(asked & words(passage.text))
                if overlap:
                    scored.append((overlap / (len(asked) or 1), collection_id, number, passage))
        scored.sort(key=lambda item: -item[0])
        found = [
            SourcePassage(
                index=index,
                document_id=passage.document_id,
                title=passage.title,
                uri=passage.uri,
                page=passage.page,
                chunk_id=f"{collection_id}:{number}",
                text=passage.text,
                score=round(score, 4),
            )
            for index, (score, collection_id, number, passage) in enumerate(scored[: top_k or self._top_k], 1)
        ]
        return Retrieval(found, pending)
