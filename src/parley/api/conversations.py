"""`/api/conversations`: list, read, rename, delete and export stored conversations."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from parley.api.chat_schema import SourcePassageOut, UsageOut
from parley.api.deps import OwnerDep, RunHubDep, StoreDep
from parley.api.input_limits import CheckedJSONRoute, is_conversation_id
from parley.api.runs import ActiveRunOut, active_run_out
from parley.store.errors import ConversationNotFound

router = APIRouter(prefix="/api/conversations", tags=["Conversations"], route_class=CheckedJSONRoute)


def _conversation_id(conversation_id: Annotated[str, Path()]) -> str:
    """A conversation id from the path; one no conversation can have is simply not found (404)."""
    if not is_conversation_id(conversation_id):
        raise ConversationNotFound(conversation_id[:200])
    return conversation_id


ConversationIdPath = Annotated[str, Depends(_conversation_id)]


class ConversationOut(BaseModel):
    id: str
    title: str | None
    model: str | None
    agent: str | None
    message_count: int
    created_at: datetime
    updated_at: datetime = Field(description="Last activity.")


class MessageOut(BaseModel):
    id: str
    position: int
    role: str
    content: str
    reasoning: str | None
    tool_calls: list[dict[str, object]] | None
    tool_call_id: str | None
    model: str | None
    agent: str | None
    usage: UsageOut | None
    time_to_first_token_ms: float | None
    total_ms: float | None
    finish_reason: str | None
    status: Literal["complete", "cancelled", "failed", "streaming"]
    error: str | None
    created_at: datetime
    steps: list[dict[str, object]] | None = Field(
        default=None,
        description="An agent's steps before this reply: assistant messages with `tool_calls`, and `tool` results.",
    )
    sources: list[SourcePassageOut] | None = Field(
        default=None, description="The passages the reply drew on and cites as [1], [2] … (turns with collections)."
    )


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]
    active_run: ActiveRunOut | None = Field(
        default=None, description="The reply being generated now, if any: attach with `/api/runs/{run_id}/events`."
    )


class ConversationPageOut(BaseModel):
    data: list[ConversationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next, older page; null at the end.")


class Rename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: StrictStr = Field(min_length=1, max_length=200)


@router.get("")
async def list_conversations(
    store: StoreDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ConversationPageOut:
    """Newest activity first: the caller's own conversations (every one, for a caller who sees all)."""
    page = await store.list_conversations(limit=limit, cursor=cursor, owner=owner)
    return ConversationPageOut(
        data=[ConversationOut.model_validate(item.to_dict()) for item in page.items], next_cursor=page.next_cursor
    )


@router.get("/{conversation_id}")
async def get_conversation(
    conversation_id: ConversationIdPath, store: StoreDep, owner: OwnerDep, runs: RunHubDep
) -> ConversationDetail:
    detail = ConversationDetail.model_validate((await store.get_conversation(conversation_id, owner=owner)).to_dict())
    detail.active_run = active_run_out(await runs.active_run(conversation_id))
    return detail


@router.patch("/{conversation_id}")
async def rename_conversation(
    conversation_id: ConversationIdPath, body: Rename, store: StoreDep, owner: OwnerDep
) -> ConversationOut:
    return ConversationOut.model_validate((await store.rename(conversation_id, body.title, owner=owner)).to_dict())


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: ConversationIdPath, store: StoreDep, owner: OwnerDep) -> Response:
    await store.delete(conversation_id, owner=owner)
    return Response(status_code=204)


@router.get(
    "/{conversation_id}/export",
    responses={200: {"content": {"application/json": {}, "text/markdown": {}}}},
    response_model=None,
)
async def export_conversation(
    conversation_id: ConversationIdPath,
    store: StoreDep,
    owner: OwnerDep,
    format: Literal["json", "markdown"] = "json",
) -> Response:
    """The whole conversation as a JSON document or as Markdown, as a download."""
    if format == "markdown":
        body = await store.export_markdown(conversation_id, owner=owner)
        return PlainTextResponse(
            body,
            media_type="text/markdown; charset=utf-8",
            headers=_download(conversation_id, "md"),
        )
    document = _utc_as_z(await store.export_json(conversation_id, owner=owner))
    return JSONResponse(document, headers=_download(conversation_id, "json"))


def _utc_as_z(document: dict[str, Any]) -> dict[str, Any]:
    """Times as the other conversation routes write them: `2025-01-01T12:00:00.123456Z`, not `+00:00`."""
    for record in (document, *document.get("messages", ())):
        for key in ("created_at", "updated_at"):
            value = record.get(key)
            if isinstance(value, str) and value.endswith("+00:00"):
                record[key] = value[: -len("+00:00")] + "Z"
    return document


def _download(conversation_id: str, extension: str) -> dict[str, str]:
    """A Content-Disposition header whatever the id holds: only characters safe in a header and a filename."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", conversation_id)[:128]
    return {"Content-Disposition": f'attachment; filename="{name}.{extension}"'}
