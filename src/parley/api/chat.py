"""`POST /api/chat`: Parley's own chat API, streamed as named SSE events or answered as JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import ServerSentEvent

from parley.api.chat_events import ChatEvents, NamedEvent
from parley.api.chat_schema import STREAM_EVENT_MODELS, ChatBody, ChatReply, UsageOut, timing_out, tool_calls_out
from parley.api.deps import ConversationChatDep
from parley.api.input_limits import CheckedJSONRoute
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.errors import ParleyError
from parley.events import EventBatch
from parley.models.base import GenerationParams

router = APIRouter(prefix="/api", tags=["Parley chat API"], route_class=CheckedJSONRoute)

_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "With `stream` true (the default): `text/event-stream` of named events, in order "
            "`message_start`, then any of `text_delta` / `reasoning_delta`, then `tool_call` for each "
            "tool call, then `message_complete`; or `error` as the last event if the run fails. "
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
    """Named SSE events, numbered so clients can tell their place."""

    def __init__(self, events: ChatEvents) -> None:
        self._events = events
        self._sequence = 0

    def _sse(self, named: NamedEvent) -> bytes:
        self._sequence += 1
        name, payload = named
        return ServerSentEvent(data=payload.model_dump_json(), event=name, id=str(self._sequence)).encode()

    def opening(self) -> bytes:
        return b"".join(map(self._sse, self._events.opening()))

    def encode(self, batch: EventBatch) -> bytes:
        return b"".join([self._sse(named) for event in batch for named in self._events.encode(event)])

    def closing(self) -> bytes:
        return b"".join(map(self._sse, self._events.closing()))

    def error(self, error: ParleyError) -> bytes:
        return self._sse(self._events.error(error))


@router.post("/chat", response_model=ChatReply, responses=_STREAM_DOC)
async def chat(body: ChatBody, request: Request, conversations: ConversationChatDep) -> Response | ChatReply:
    turn = await conversations.start(
        body.message,
        conversation_id=body.conversation_id,
        model=body.model,
        agent=body.agent,
        params=GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature),
    )
    run, events = turn.run, ChatEvents(turn)
    if not body.stream:
        await collect_unless_disconnected(run, request.receive)
        return ChatReply(
            **events.start().model_dump(exclude={"created"}),
            content=run.text,
            reasoning=run.reasoning,
            tool_calls=tool_calls_out(run.tool_calls),
            finish_reason=run.finish_reason or "stop",
            usage=UsageOut.of(run.usage),
            timing=timing_out(run),
        )
    return await stream_run(request.app.state.settings, run, _SSEChatEvents(events))
