"""What the knowledge base hands out: collections and documents as plain records, and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from parley.errors import ParleyError

DocumentState = Literal["queued", "indexing", "ready", "failed"]


class CollectionNotFound(ParleyError):
    """No such collection, or another owner's: the same answer for both."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "collection_not_found"

    def __init__(self, collection_id: str) -> None:
        super().__init__(f"collection {collection_id[:200]!r} does not exist", param="collection_id")


class DocumentNotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "document_not_found"

    def __init__(self, document_id: str) -> None:
        super().__init__(f"document {document_id[:200]!r} does not exist", param="document_id")


class IngestQueueFull(ParleyError):
    status_code = 503
    error_type = "server_error"
    code = "ingest_queue_full"


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    id: str
    name: str
    owner: str | None
    embedder: str
    dimension: int
    vector_table: str
    keyword_table: str
    top_k: int
    score_threshold: float
    vector_weight: float
    keyword_weight: float
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    id: str
    collection_id: str
    title: str
    uri: str | None
    media_type: str
    size: int
    state: DocumentState
    progress: float | None
    error: str | None
    chunk_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """A chunk found by a search, with its document (only documents that are ready)."""

    chunk_id: int
    collection_id: str
    document_id: str
    title: str
    uri: str | None
    page: int | None
    text: str
