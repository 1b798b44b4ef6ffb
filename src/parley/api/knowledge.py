"""`/api/collections`: collections of documents, their documents, and searching them.

Documents are uploaded as `multipart/form-data` (a `file`, and an optional `title`) or sent as
JSON (`{"text": ..., "title": ...}` or `{"url": ..., "title": ...}`). The upload answers at
once (202) with the document, `queued`; its `state` tells when it is searchable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr, ValidationError
from starlette.datastructures import UploadFile

from parley.api.deps import KnowledgeDep, OwnerDep
from parley.api.input_limits import CheckedJSONRoute, Integer, loads_object
from parley.errors import InvalidRequest, PayloadTooLarge
from parley.knowledge.fetch import fetch
from parley.knowledge.records import CollectionRecord, DocumentRecord

router = APIRouter(prefix="/api/collections", tags=["Knowledge"], route_class=CheckedJSONRoute)

Responses = dict[int | str, dict[str, Any]]
_ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_BODY}


_UNAVAILABLE: Responses = {
    503: _error("Knowledge is unavailable here (`knowledge_unavailable`): see the README's PostgreSQL setup.")
}
_NOT_FOUND: Responses = {404: _error("No such collection or document, or another owner's (`collection_not_found`).")}
CollectionId = Annotated[str, Path(max_length=200)]
DocumentId = Annotated[str, Path(max_length=200)]
Weight = Annotated[StrictFloat, Field(ge=0, le=10, allow_inf_nan=False)]
# The bounds first, then Integer's validator (5.0 is 5; true and "5" are refused): in this order
# the schema says `minimum`/`maximum`, as the validation does.
TopK = Annotated[int, Field(ge=1, le=50), *get_args(Integer)[1:]]


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=128)
    top_k: TopK | None = Field(default=None, description="Passages per search.")
    score_threshold: Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        default=0.0, description="Fused scores below it are left out (1.0: first in every ranking)."
    )
    vector_weight: Weight = 1.0
    keyword_weight: Weight = 1.0


class CollectionOut(BaseModel):
    id: str
    name: str
    embedder: str
    dimension: int
    top_k: int
    score_threshold: float
    vector_weight: float
    keyword_weight: float
    created_at: datetime

    @classmethod
    def of(cls, record: CollectionRecord) -> CollectionOut:
        return cls.model_validate({name: getattr(record, name) for name in cls.model_fields})


class DocumentOut(BaseModel):
    id: str
    collection_id: str
    title: str
    uri: str | None
    media_type: str
    size: int
    state: Literal["queued", "indexing", "ready", "failed"]
    progress: float | None = Field(description="0..1 while indexing.")
    error: str | None = Field(description="Why indexing failed.")
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    duplicate: bool = Field(
        default=False, description="The collection already had this content: this is that document."
    )

    @classmethod
    def of(cls, record: DocumentRecord, *, duplicate: bool = False) -> DocumentOut:
        return cls.model_validate({**{n: getattr(record, n) for n in DocumentRecord.__slots__}, "duplicate": duplicate})


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(min_length=1, description="The document itself (Markdown or plain text).")
    title: StrictStr | None = Field(default=None, min_length=1, max_length=500)


class URLDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="Fetched by the server: hosts in `knowledge.url_allow_hosts` only.",
    )
    title: StrictStr | None = Field(default=None, min_length=1, max_length=500)


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(min_length=1, max_length=4000)
    top_k: TopK | None = None
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"


class PassageOut(BaseModel):
    index: int
    document_id: str
    title: str
    uri: str | None
    page: int | None
    chunk_id: str
    text: str
    score: float


class PendingOut(BaseModel):
    document_id: str
    title: str
    state: str
    progress: float | None


class SearchOut(BaseModel):
    data: list[PassageOut]
    pending: list[PendingOut] = Field(description="Documents not searchable yet (still being indexed).")


_DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "title": {"type": "string", "minLength": 1, "maxLength": 500},
                    },
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {"oneOf": [TextDocument.model_json_schema(), URLDocument.model_json_schema()]}
            },
        },
    }
}


@router.post("", status_code=201, responses=_UNAVAILABLE)
async def create_collection(body: CollectionIn, knowledge: KnowledgeDep, owner: OwnerDep) -> CollectionOut:
    """A new collection, owned by the caller, embedded by the configured embedder."""
    record = await knowledge.create_collection(
        body.name,
        owner,
        top_k=body.top_k,
        score_threshold=body.score_threshold,
        vector_weight=body.vector_weight,
        keyword_weight=body.keyword_weight,
    )
    return CollectionOut.of(record)


@router.get("", responses=_UNAVAILABLE)
async def list_collections(knowledge: KnowledgeDep, owner: OwnerDep) -> list[CollectionOut]:
    return [CollectionOut.of(record) for record in await knowledge.collections(owner)]


@router.get("/{collection_id}", responses={**_NOT_FOUND, **_UNAVAILABLE})
async def get_collection(collection_id: CollectionId, knowledge: KnowledgeDep, owner: OwnerDep) -> CollectionOut:
    return CollectionOut.of(await knowledge.collection(collection_id, owner))


@router.delete("/{collection_id}", status_code=204, responses={**_NOT_FOUND, **_UNAVAILABLE})
async def delete_collection(collection_id: CollectionId, knowledge: KnowledgeDep, owner: OwnerDep) -> Response:
    """The collection, its documents, chunks and index entries."""
    await knowledge.delete_collection(collection_id, owner)
    return Response(status_code=204)


@router.post(
    "/{collection_id}/documents",
    status_code=202,
    openapi_extra=_DOCUMENT_BODY,
    responses={
        **_NOT_FOUND,
        400: _error("A file Parley cannot read (`unsupported_document`); a URL not allowed (`url_not_allowed`)."),
        413: _error("Larger than `knowledge.max_document_bytes` or `max_body_bytes`."),
        502: _error("The URL could not be fetched."),
        503: _error("The ingest queue is full (`ingest_queue_full`), or knowledge is unavailable."),
    },
)
async def add_document(
    collection_id: CollectionId, request: Request, knowledge: KnowledgeDep, owner: OwnerDep
) -> DocumentOut:
    """Store the document and queue it for indexing; answers at once. The same content twice is
    one document (`duplicate: true`)."""
    await knowledge.collection(collection_id, owner)  # 404 before reading an upload
    limit = knowledge.settings.max_document_bytes
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        content, title, filename, declared, uri = await _uploaded(request, limit)
    elif content_type == "application/json":
        body = _by_value(await request.body(), request.app.state.settings.max_json_depth)
        title = body.title
        filename = declared = uri = None
        if isinstance(body, TextDocument):
            content, declared = body.text.encode(), "text/markdown"
        else:
            settings = knowledge.settings
            fetched = await fetch(
                body.url, settings.url_allow_hosts, max_bytes=limit, seconds=settings.url_timeout_seconds
            )
            content, declared, uri = fetched.content, fetched.content_type, fetched.url
            filename = fetched.url.split("?")[0].rsplit("/", 1)[-1] or None
    else:
        raise InvalidRequest(
            "send the document as multipart/form-data (`file`) or JSON (`text` or `url`)", code="unsupported_media_type"
        )
    if len(content) > limit:
        raise PayloadTooLarge(f"the document is larger than {limit} bytes", param="file")
    document, created = await knowledge.add_document(
        collection_id,
        owner,
        content,
        title=title or filename or uri or "Untitled",
        filename=filename,
        declared_type=declared,
        uri=uri,
    )
    return DocumentOut.of(document, duplicate=not created)


async def _uploaded(request: Request, limit: int) -> tuple[bytes, str | None, str | None, str | None, str | None]:
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:  # starlette's MultiPartException and parser errors: the client's body
        raise InvalidRequest(
            "the multipart body could not be read", code="invalid_multipart", detail=repr(exc)
        ) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("a multipart upload needs a `file` part", param="file")
    content = await upload.read(limit + 1)
    title = form.get("title")
    if title is not None and (not isinstance(title, str) or not 1 <= len(title) <= 500):
        raise InvalidRequest("`title` must be 1-500 characters", param="title")
    return content, title, upload.filename, upload.content_type, None


def _by_value(raw: bytes, max_depth: int) -> TextDocument | URLDocument:
    data = loads_object(raw, max_depth=max_depth)
    try:
        return URLDocument.model_validate(data) if "url" in data else TextDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{where + ': ' if where else ''}{first['msg']}", param=where) from None


@router.get("/{collection_id}/documents", responses={**_NOT_FOUND, **_UNAVAILABLE})
async def list_documents(collection_id: CollectionId, knowledge: KnowledgeDep, owner: OwnerDep) -> list[DocumentOut]:
    """Each document with its state: `queued`, `indexing` (with progress), `ready`, or `failed` (with the reason)."""
    return [DocumentOut.of(d) for d in await knowledge.documents(collection_id, owner)]


@router.get("/{collection_id}/documents/{document_id}", responses={**_NOT_FOUND, **_UNAVAILABLE})
async def get_document(
    collection_id: CollectionId, document_id: DocumentId, knowledge: KnowledgeDep, owner: OwnerDep
) -> DocumentOut:
    return DocumentOut.of(await knowledge.document(collection_id, document_id, owner))


@router.delete("/{collection_id}/documents/{document_id}", status_code=204, responses={**_NOT_FOUND, **_UNAVAILABLE})
async def delete_document(
    collection_id: CollectionId, document_id: DocumentId, knowledge: KnowledgeDep, owner: OwnerDep
) -> Response:
    """The document and its chunks (also while it is being indexed: its indexing stops)."""
    await knowledge.delete_document(collection_id, document_id, owner)
    return Response(status_code=204)


@router.post("/{collection_id}/search", responses={**_NOT_FOUND, **_UNAVAILABLE})
async def search(collection_id: CollectionId, body: SearchIn, knowledge: KnowledgeDep, owner: OwnerDep) -> SearchOut:
    """Hybrid search (vectors and keywords, fused by reciprocal rank), as chat retrieves."""
    found = await knowledge.search(body.query, [collection_id], owner, top_k=body.top_k, mode=body.mode)
    return SearchOut(
        data=[PassageOut.model_validate(p, from_attributes=True) for p in found.passages],
        pending=[PendingOut.model_validate(p, from_attributes=True) for p in found.pending],
    )
