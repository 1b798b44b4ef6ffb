"""StreamForge (a layered FastAPI chat service): `POST /chat`, `GET /chat/health`,
`GET /chat/history/{session_id}` and `GET /`.

`POST /chat` streams the answer as `text/event-stream` of unnamed events whose data is the text
itself (`data: Hello`), with no end marker: the stream ends when the reply does. Reasoning is
never sent. A failure after the stream started is one `event: error` whose data is the OpenAI
error body. A request with `session_id` continues (or starts) the stored conversation of that
id; without one the request is stateless, with `history` (Tether's) as the earlier messages.

Tether posts to the same path and reads JSON: a request with `"stream": false`, Tether's
`history`, `think` or `images`, or an `Accept` of `application/json` (not `text/event-stream`)
gets `parley.api.compat.tether`'s JSON reply, and so does any request to a server configured
with `chat_route_reply = "json"` (what Tether's `TETHER_*` settings imply).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from parley.access.principal import principal_of
from parley.api.compat.tether import TetherReply, tether_reply
from parley.api.deps import ChatPageDep, ConversationChatDep, OwnerDep, StoreDep
from parley.api.health import VERSION
from parley.api.input_limits import (
    CheckedJSONRoute,
    ConversationId,
    Flag,
    MaxTokens,
    Name,
    Temperature,
    is_conversation_id,
)
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.chat.run import Run
from parley.chat.service import ChatService
from parley.config import Settings
from parley.errors import ParleyError
from parley.events import EventBatch, TextDelta
from parley.models.base import ChatMessage, ChatRequest, GenerationParams
from parley.store.errors import ConversationNotFound

router = APIRouter(tags=["StreamForge and Tether"], route_class=CheckedJSONRoute)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EarlierMessage(BaseModel):
    """One message of Tether's `history`."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant", "system"]
    content: str


class PlainChatBody(BaseModel):
    """`POST /chat`: StreamForge's `{"message"}` and Tether's `ChatRequest`."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="The user's message.")
    session_id: ConversationId | None = Field(
        default=None, description="Keep this session's history on the server (a conversation of this id)."
    )
    history: list[EarlierMessage] | None = Field(
        default=None,
        description="Earlier messages, kept by the client; ignored with `session_id`, whose history the server keeps.",
    )
    model: Name | None = Field(default=None, description="A model name from `/v1/models`; default: the first.")
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    stream: Flag | None = Field(default=None, description="true: SSE text pieces; false: one JSON reply.")
    think: Flag | None = Field(default=None, description="Accepted for Tether; reasoning models reason anyway.")
    images: list[str] | None = Field(default=None, max_length=0, description="Not supported: must be empty.")


class _TextPieces:
    """The run's answer as unnamed SSE events of plain text; multi-line text as several `data:` lines."""

    def opening(self) -> bytes:
        return b""

    def encode(self, batch: EventBatch) -> bytes:
        return b"".join(_event(event.text) for event in batch if type(event) is TextDelta and event.text)

    def closing(self) -> bytes:
        return b""

    def error(self, error: ParleyError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(error.to_body()) + b"\n\n"


def _event(text: str) -> bytes:
    if "\n" not in text and "\r" not in text:
        return b"data: " + text.encode() + b"\n\n"
    return b"".join(b"data: " + line.encode() + b"\n" for line in _LINE_BREAK.split(text)) + b"\n"


async def _chat_service(request: HTTPConnection) -> ChatService:
    chat: ChatService = request.app.state.chat
    return chat


ChatServiceDep = Annotated[ChatService, Depends(_chat_service)]

_TEXT_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    # An unnamed event is a `message` event to SSE readers.
    "properties": {"data": {"type": "string"}, "event": {"enum": ["message", "error"]}},
}
_CHAT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "`text/event-stream` of unnamed events, each the next piece of the answer as plain text "
            "(StreamForge), or `event: error` with an OpenAI error body as the last event if the reply "
            "fails; or one JSON reply (Tether's) for `stream: false`, `history`, `think`, `images`, or "
            "`Accept: application/json`."
        ),
        "content": {
            "text/event-stream": {"schema": _TEXT_EVENT},
            "application/json": {"schema": {"$ref": "#/components/schemas/TetherReply"}},
        },
    }
}


@router.post("/chat", response_model=TetherReply, responses=_CHAT_DOC)
async def plain_chat(
    body: PlainChatBody, request: Request, conversations: ConversationChatDep, chat: ChatServiceDep
) -> Response | TetherReply:
    settings: Settings = request.app.state.settings
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature)
    run: Run
    if body.session_id is not None:
        run = (
            await conversations.start(
                body.message,
                conversation_id=body.session_id,
                model=body.model,
                params=params,
                principal=principal_of(request),
            )
        ).run
    else:
        earlier = [ChatMessage(role=m.role, content=m.content) for m in body.history or ()]
        messages = [*earlier, ChatMessage(role="user", content=body.message)]
        run = await chat.start(
            ChatRequest(messages=messages, params=params), model=body.model, principal=principal_of(request)
        )
    if _wants_json(body, request, settings):
        await collect_unless_disconnected(run, request.receive)
        return tether_reply(run)
    return await stream_run(settings, run, _TextPieces())


def _wants_json(body: PlainChatBody, request: Request, settings: Settings) -> bool:
    if body.stream is not None:
        return not body.stream
    if body.history is not None or body.think is not None or body.images is not None:
        return True  # only Tether's client sends these
    accept = request.headers.get("accept", "")
    if "text/event-stream" in accept:
        return False
    if "application/json" in accept:
        return True
    return settings.chat_route_reply == "json"


class ChatServiceHealth(BaseModel):
    service: Literal["chat"] = "chat"
    status: Literal["healthy"] = "healthy"
    streaming: Literal["enabled"] = "enabled"


@router.get("/chat/health")
async def chat_health() -> ChatServiceHealth:
    """StreamForge's chat service health."""
    return ChatServiceHealth()


class HistoryMessage(BaseModel):
    role: str
    content: str
    created_at: str = Field(description="ISO 8601 in UTC (`Z`).")


class SessionHistory(BaseModel):
    session_id: str
    messages: list[HistoryMessage] = Field(description="Oldest first; empty for a session with no messages yet.")


@router.get("/chat/history/{session_id}")
async def chat_history(
    session_id: Annotated[str, Path(max_length=128)], store: StoreDep, owner: OwnerDep
) -> SessionHistory:
    """The messages of the session `POST /chat` kept under `session_id` (another owner's: none)."""
    if not is_conversation_id(session_id):  # no session can have it
        return SessionHistory(session_id=session_id, messages=[])
    try:
        conversation = await store.get_conversation(session_id, owner=owner)
    except ConversationNotFound:
        return SessionHistory(session_id=session_id, messages=[])
    return SessionHistory(
        session_id=session_id,
        messages=[
            HistoryMessage(
                role=message.role,
                content=message.content,
                created_at=message.created_at.isoformat().replace("+00:00", "Z"),
            )
            for message in conversation.messages
        ],
    )


class ServiceInfo(BaseModel):
    name: str = "Parley"
    version: str = VERSION
    status: Literal["running"] = "running"
    endpoints: dict[str, str]


_ROOT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON for StreamForge's clients; the chat page for a browser (an `Accept` naming `text/html`).",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


@router.get("/", response_model=ServiceInfo, responses=_ROOT_DOC)
async def root(request: Request, response: Response, page: ChatPageDep) -> ServiceInfo | Response:
    """What this server is, and where its main routes are; the chat page (`parley.web`) for a browser."""
    if page.wanted_by(request):
        return page.page()
    response.headers["Vary"] = "Accept"  # a cache in front must not give this JSON to a browser
    return ServiceInfo(
        endpoints={
            "chat": "/chat",
            "health": "/chat/health",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "parley_chat": "/api/chat",
            "openai": "/v1/chat/completions",
        }
    )
