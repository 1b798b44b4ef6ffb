"""`POST /api/chat`: Parley's own chat API, streamed as named SSE events or answered as JSON."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.access.principal import principal_of
from parley.api.chat_events import ChatEvents, NamedEvent
from parley.api.chat_schema import (
    STREAM_EVENT_MODELS,
    ChatBody,
    ChatReply,
    SourcesOut,
    UsageOut,
    timing_out,
    tool_calls_out,
)
from parley.api.deps import ConversationChatDep, RunHubDep
from parley.api.error_handlers import error_response
from parley.api.input_limits import CheckedJSONRoute, loads_object
from parley.api.openai import read_body, route_path
from parley.api.runs import stream_surviving
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.chat.turns import ConversationChat, Turn
from parley.errors import InvalidRequest, ParleyError
from parley.events import EventBatch, ReasoningDelta, TextDelta
from parley.models.base import GenerationParams
from parley.runs import RunHub

router = APIRouter(prefix="/api", tags=["Parley chat API"], route_class=CheckedJSONRoute)

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "With `stream` true (the default): `text/event-stream` of named events, in order "
            "`message_start`, then `sources` (with `collections`: the passages the reply cites), then any of "
            "`text_delta` / `reasoning_delta` (and, for an agent that runs "
            "tools, `tool_call_delta`, `tool_result`, `agent_handoff` and `step`), then `tool_call` for each "
            "tool call left to the client, then `message_complete`; or `error` as the last event if the run fails. "
            "With `stream` false: one JSON `ChatReply`."
        ),
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatReply"}},
            "text/event-stream": {
                "schema": {
                    "oneOf": [{"$ref": f"#/components/schemas/{model.__name__}"} for model in STREAM_EVENT_MODELS]
                }
            },
        },
    }
}


class _SSEChatEvents:
    """Named SSE events, numbered so clients can tell their place.

    Text and reasoning deltas, one per token, are framed straight from their text (no payload
    model, no SSE object): on a stored turn's path that was a tenth of the CPU.
    """

    def __init__(self, events: ChatEvents) -> None:
        self._events = events
        self._sequence = 0

    def _frame(self, name: bytes, data: bytes) -> bytes:
        self._sequence += 1
        return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (self._sequence, name, data)

    def _sse(self, named: NamedEvent) -> bytes:
        name, payload = named
        return self._frame(name.encode(), payload.model_dump_json().encode())

    def opening(self) -> bytes:
        return b"".join(map(self._sse, self._events.opening()))

    def encode(self, batch: EventBatch) -> bytes:
        parts: list[bytes] = []
        for event in batch:
            if type(event) is TextDelta:
                parts.append(self._frame(b"text_delta", b'{"text":' + orjson.dumps(event.text) + b"}"))
            elif type(event) is ReasoningDelta:
                parts.append(self._frame(b"reasoning_delta", b'{"text":' + orjson.dumps(event.text) + b"}"))
            else:
                parts += map(self._sse, self._events.encode(event))
        return b"".join(parts)

    def closing(self) -> bytes:
        return b"".join(map(self._sse, self._events.closing()))

    def error(self, error: ParleyError) -> bytes:
        return self._sse(self._events.error(error))


@router.post("/chat", response_model=ChatReply, responses=_STREAM_DOC)
async def chat(
    body: ChatBody,
    request: Request,
    conversations: ConversationChatDep,
    runs: RunHubDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=r"^[\x21-\x7e]{1,255}$",
            description=(
                "A retry with the same key (and body) gets the first request's run, from its start. Only for a "
                'streamed reply that continues when its client leaves (`on_disconnect` "continue"): else 400.'
            ),
        ),
    ] = None,
) -> Response | ChatReply:
    return await answer(body, request, conversations, runs, idempotency_key)


async def answer(
    body: ChatBody,
    request: Request,
    conversations: ConversationChat,
    runs: RunHub,
    idempotency_key: str | None,
) -> Response | ChatReply:
    """`POST /api/chat`'s reply to a valid request, whichever way it came in (see `ChatRoute`)."""

    def start() -> Awaitable[Turn]:
        return conversations.start(
            body.message,
            conversation_id=body.conversation_id,
            model=body.model,
            agent=body.agent,
            params=GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature),
            principal=principal_of(request),
            collections=body.collections,
        )

    if body.stream and (body.on_disconnect or request.app.state.settings.on_disconnect) == "continue":
        return await stream_surviving(request, runs, start, idempotency_key=idempotency_key, body=body)
    if idempotency_key is not None:
        raise InvalidRequest(
            'Idempotency-Key needs a streamed reply that continues when its client leaves (on_disconnect "continue")',
            param="Idempotency-Key",
        )
    turn = await start()
    run, events = turn.run, ChatEvents(turn, request.app.state.settings.tools.client_result_chars)
    if not body.stream:
        await collect_unless_disconnected(run, request.receive)
        return ChatReply(
            **events.start().model_dump(),
            content=run.text,
            reasoning=run.reasoning,
            tool_calls=tool_calls_out(run.tool_calls),
            finish_reason=run.finish_reason or "stop",
            usage=UsageOut.of(run.usage),
            timing=timing_out(run),
            sources=SourcesOut.of(run.sources) if run.sources is not None else None,
        )
    return await stream_run(request.app.state.settings, run, _SSEChatEvents(events))


CHAT_PATH = "/api/chat"
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # as the route's Header(pattern=...)
_CHAT_ROUTE = next(route for route in router.routes if isinstance(route, APIRoute) and route.path == CHAT_PATH)


class ChatRoute:
    """`POST /api/chat`, served by an inner middleware ahead of FastAPI's router, as
    `openai.ChatCompletionsRoute` serves `/v1/chat/completions`: the request wrapper and dependency
    solving of a path operation were a measurable share of a stored turn's CPU.

    Only requests FastAPI would accept are answered here (a JSON body that is a valid `ChatBody`,
    a well-formed Idempotency-Key); any other goes on, its body replayed, to the FastAPI route
    above, which stays registered: it answers bad input exactly as before, and the OpenAPI
    document still describes it. Requests still pass the app's own middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != CHAT_PATH:
            await self._app(scope, receive, send)
            return
        raw = await read_body(receive)
        if raw is None:  # the client left before it finished sending
            return
        accepted = _accepted(scope, raw)
        if accepted is None:
            await self._app(scope, _replaying(raw, receive), send)
            return
        body, idempotency_key = accepted
        scope["route"] = _CHAT_ROUTE  # (what logs and metrics name the request by, as the router would)
        request = Request(scope, receive)
        state = scope["app"].state
        try:
            reply = await answer(body, request, state.conversation_chat, state.runs, idempotency_key)
        except Exception as exc:  # (raised before anything was sent: what is sent handles its own)
            response: Response = await error_response(request, exc)
        else:
            response = reply if isinstance(reply, Response) else JSONResponse(reply.model_dump(mode="json"))
        await response(scope, receive, send)


def _accepted(scope: Scope, raw: bytes) -> tuple[ChatBody, str | None] | None:
    """The body and Idempotency-Key of a request the FastAPI route would accept; None for any other."""
    content_type: bytes | None = None
    idempotency_key: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"idempotency-key" and idempotency_key is None:
            idempotency_key = value.decode("latin-1")
    if content_type is None or not _is_json(content_type):  # (FastAPI reads no other body as JSON)
        return None
    if idempotency_key is not None and _IDEMPOTENCY_KEY.fullmatch(idempotency_key) is None:
        return None
    try:
        data = loads_object(raw, max_depth=scope["app"].state.settings.max_json_depth)
        return ChatBody.model_validate(data), idempotency_key
    except (ParleyError, ValidationError):
        return None


def _is_json(content_type: bytes) -> bool:
    """As FastAPI reads a body as JSON: `application/json` or `application/*+json`, any parameters."""
    kind = content_type.split(b";", 1)[0].strip().lower()
    if b" " in kind or b"\t" in kind:  # (something unusual: left to FastAPI to judge)
        return False
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """`receive`, with the body already read given back first."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay
