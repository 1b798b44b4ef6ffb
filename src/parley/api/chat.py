"""`POST /api/chat`: Parley's own chat API, streamed as named SSE events or answered as JSON."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

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
from parley.api.input_limits import CheckedJSONRoute
from parley.api.runs import digest_of, stream_surviving
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.chat.turns import Turn
from parley.errors import InvalidRequest, ParleyError
from parley.events import EventBatch, ReasoningDelta, TextDelta
from parley.models.base import GenerationParams

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
        return await stream_surviving(
            request, runs, start, idempotency_key=idempotency_key, request_digest=digest_of(body)
        )
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
