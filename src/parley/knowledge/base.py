"""The seams of knowledge: what an embedder is, and what chat asks of the knowledge base."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from parley.events import PendingSource, SourcePassage


class Embedder(Protocol):
    """Turns texts into vectors of `dimension` floats, unit length (so cosine = dot product)."""

    @property
    def name(self) -> str:
        """Names the model and whatever changes its vectors: a collection records it, and a
        collection whose embedder's name differs from the configured one is re-embedded."""
        ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Never blocks the event loop (CPU work in a thread)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What a search found (best first, `index` from 1), and the documents it could not search yet."""

    passages: list[SourcePassage]
    pending: list[PendingSource] = field(default_factory=list)


class KnowledgeBase(Protocol):
    """What chat, agents' `search_knowledge` tool and the API need of the knowledge base."""

    async def check_collections(self, collection_ids: Sequence[str], owner: str | None) -> None:
        """Raise NotFound (404) for a collection that does not exist or belongs to another owner."""
        ...

    async def retrieve(
        self, query: str, collection_ids: Sequence[str], owner: str | None, *, top_k: int | None = None
    ) -> Retrieval:
        """Hybrid search over the collections (each with its own top-k, threshold and weights
        unless `top_k` is given), fused into one ranking."""
        ...
