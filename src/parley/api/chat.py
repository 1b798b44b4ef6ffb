"""`POST /api/chat`: Parley's own chat API, streamed as named SSE events or answered as JSON."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from parley.api.chat_schema import (
    STREAM_EVENT_MODELS,
    ChatBody,
    ChatReply,
    ErrorOut,
    MessageComplete,
    MessageStart,
    ReasoningDeltaOut,
    TextDeltaOut,
    UsageOut,
    timing_out,
    tool_calls_out,
)
from parley.api.deps import ChatServiceDep, SettingsDep
from parley.api.streaming import close_run, collect_unless_disconnected, sse_events, sse_response
from parley.chat.run import Run
from parley.errors import ParleyError
from parley.events import ReasoningDelta, StreamEvent, TextDelta
from parley.models.base import ChatMessage, ChatRequest, GenerationParams

router = APIRouter(prefix="/api", tags=["Parley chat API"])

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


class _Events:
    """Encodes one run's events as named SSE events; numbered so clients can tell their place."""

    def __init__(self, run: Run, start: MessageStart) -> None:
        self._run = run
        self._start = start
        self._sequence = 0

    def _event(self, name: str, payload: BaseModel) -> ServerSentEvent:
        self._sequence += 1
        return ServerSentEvent(data=payload.model_dump_json(), event=name, id=str(self._sequence))

    def opening(self) -> Iterator[ServerSentEvent]:
        yield self._event("message_start", self._start)

    def encode(self, event: StreamEvent) -> Iterator[ServerSentEvent]:
        if isinstance(event, TextDelta):
            yield self._event("text_delta", TextDeltaOut(text=event.text))
        elif isinstance(event, ReasoningDelta):
            yield self._event("reasoning_delta", ReasoningDeltaOut(text=event.text))

    def closing(self) -> Iterator[ServerSentEvent]:
        for call in tool_calls_out(self._run.tool_calls):
            yield self._event("tool_call", call)
        complete = MessageComplete(
            message_id=self._start.message_id,
            finish_reason=self._run.finish_reason or "stop",
            usage=_usage(self._run),
            timing=timing_out(self._run),
        )
        yield self._event("message_complete", complete)

    def error(self, error: ParleyError) -> ServerSentEvent:
        return self._event("error", ErrorOut(message=error.message, type=error.error_type, code=error.code))


def _usage(run: Run) -> UsageOut | None:
    return UsageOut.of(run.usage)


@router.post("/chat", response_model=ChatReply, responses=_STREAM_DOC)
async def chat(body: ChatBody, request: Request, chat: ChatServiceDep, settings: SettingsDep) -> Response | ChatReply:
    chat_request = ChatRequest(
        messages=[ChatMessage(role="user", content=body.message)],
        params=GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature),
    )
    run = chat.start(chat_request, model=body.model, agent=body.agent)
    start = MessageStart(
        run_id=run.id,
        message_id=f"msg_{uuid.uuid4().hex}",
        conversation_id=body.conversation_id or f"conv_{uuid.uuid4().hex}",
        model=run.model,
        agent=body.agent,
        created=run.created,
    )
    if not body.stream:
        await collect_unless_disconnected(run, request)
        return ChatReply(
            **start.model_dump(exclude={"created"}),
            content=run.text,
            reasoning=run.reasoning,
            tool_calls=tool_calls_out(run.tool_calls),
            finish_reason=run.finish_reason or "stop",
            usage=_usage(run),
            timing=timing_out(run),
        )
    try:
        await run.wait_for_head(settings.stream_head_wait_seconds)
    except BaseException:
        await close_run(run)
        raise
    events = _Events(run, start)
    return sse_response(request, sse_events(run, events.encode, events.opening(), events.closing, events.error))
