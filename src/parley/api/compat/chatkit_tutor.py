"""`POST /chatkit/api`: the ChatKit tutor's docs-site widget, over Parley's stored conversations.

The widget (a Docusaurus "AI tutor" chat bar) posts `{"type": "user_message", "message": {"id",
"content"}, "context": {"pageUrl", "pageTitle", "userName"}?}` and reads `data: {...}` lines:
`text_delta` events with `content`, then `message_complete`, or `error` with the text to show in
`content`. `page_context: {"url", "title"}` is read as well as `context`. Both id spellings are
sent: `message_id` is the reply's id in Parley, `messageId` echoes the request's `message.id` as
the tutor's own backend did.

Memory: the widget sends no session id (only a new id per message), so each message starts a
conversation of its own unless the client names one with `session_id` (also read as
`thread_id` or `conversation_id`); `message_complete` says which conversation the turn went to.
Messages go to the agent named `tutor` when one is configured: its system prompt is where the
widget's actions (`Explain:`, `Translate to Urdu:`, `Summarize:`) are handled.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from parley.access.principal import principal_of
from parley.api.deps import ConversationChatDep
from parley.api.input_limits import CheckedJSONRoute, ConversationId
from parley.api.streaming import SSEResponse, stream_run
from parley.chat.turns import Turn
from parley.errors import ParleyError
from parley.events import EventBatch, TextDelta
from parley.models.base import ChatMessage

router = APIRouter(tags=["ChatKit tutor widget"], route_class=CheckedJSONRoute)

TUTOR_AGENT = "tutor"
MAX_CONTENT = 2000  # the widget's own input limit


class TutorMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr = Field(min_length=1, max_length=128, description="The client's id for this message (a UUID).")
    content: StrictStr = Field(min_length=1, max_length=MAX_CONTENT)


class PageContext(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: StrictStr | None = Field(default=None, max_length=2048)
    title: StrictStr | None = Field(default=None, max_length=500)


class WidgetContext(BaseModel):
    """What the tutor's widget sends as `context` (its own camelCase names)."""

    model_config = ConfigDict(extra="ignore")

    pageUrl: StrictStr | None = Field(default=None, max_length=2048)
    pageTitle: StrictStr | None = Field(default=None, max_length=500)
    userName: StrictStr | None = Field(default=None, max_length=200)


class TutorRequest(BaseModel):
    # Other fields the widget sends (its `history`, an auth token) are ignored: the memory is Parley's.
    model_config = ConfigDict(extra="ignore")

    type: Literal["user_message"]
    message: TutorMessage
    page_context: PageContext | None = None
    context: WidgetContext | None = None
    session_id: ConversationId | None = Field(
        default=None, description="Continue this conversation (or start one under this id)."
    )
    thread_id: ConversationId | None = Field(default=None, description="The same as `session_id`.")
    conversation_id: ConversationId | None = Field(default=None, description="The same as `session_id`.")

    def page_note(self) -> str | None:
        """Where the reader is, as the tutor's backend told its model: `[Currently viewing: …]`."""
        page, widget = self.page_context, self.context
        title = (page.title if page else None) or (widget.pageTitle if widget else None)
        url = (page.url if page else None) or (widget.pageUrl if widget else None)
        parts = []
        if widget is not None and widget.userName:
            parts.append(f"Student's name: {widget.userName}")
        if title or url:
            parts.append(
                f"Currently viewing: {title} ({url})" if title and url else f"Currently viewing: {title or url}"
            )
        return f"[{' | '.join(parts)}]" if parts else None


class _TutorEvents:
    """The widget's `data:` lines: no event names, every payload a JSON object with a `type`."""

    def __init__(self, turn: Turn, client_message_id: str) -> None:
        self._turn = turn
        ids = {"message_id": turn.message_id, "messageId": client_message_id}
        self._delta_head = b'data: {"type":"text_delta","done":false,' + orjson.dumps(ids)[1:-1] + b',"content":'
        self._ids = ids

    def opening(self) -> bytes:
        return b""

    def encode(self, batch: EventBatch) -> bytes:
        return b"".join(
            self._delta_head + orjson.dumps(event.text) + b"}\n\n"
            for event in batch
            if type(event) is TextDelta and event.text
        )

    def closing(self) -> bytes:
        run = self._turn.run
        finish = run.ended_because
        return self._line(
            {"type": "message_complete", "done": True, **self._ids, "conversation_id": self._turn.conversation_id}
            | {"finish_reason": finish}
        )

    def error(self, error: ParleyError) -> bytes:
        body = {"type": "error", "done": True, "content": error.message, **self._ids}
        return self._line(body | {"conversation_id": self._turn.conversation_id} | error.to_body())

    @staticmethod
    def _line(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"


_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["type", "done"],
    "properties": {
        "type": {"enum": ["text_delta", "message_complete", "error"]},
        "done": {"type": "boolean"},
        "content": {"type": "string"},
        "message_id": {"type": "string"},
        "messageId": {"type": "string"},
        "conversation_id": {"type": "string"},
        "finish_reason": {"type": "string"},
        "error": {"type": "object"},
    },
}
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "`text/event-stream` of unnamed `data:` events: `text_delta` (`content`: the next piece of the "
            "answer) …, then `message_complete` (with `conversation_id`); or `error` (`content`: the message "
            "to show) as the last event if the reply fails after it started."
        ),
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _EVENT}
                    },
                }
            }
        },
    },
    **{
        status: {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        }
        for status, why in (
            (429, "The model's upstream is rate limiting (`rate_limited`)."),
            (502, "The model's upstream failed (`upstream_error`)."),
            (503, "The store or the model is unavailable."),
            (504, "The model's upstream did not answer in time."),
        )
    },
}


@router.post("/chatkit/api", status_code=200, response_class=SSEResponse, responses=_STREAM_DOC)
async def tutor_message(body: TutorRequest, request: Request, conversations: ConversationChatDep) -> SSEResponse:
    """One message from the ChatKit tutor widget; the answer streams back as the widget reads it."""
    settings = request.app.state.settings
    agent = TUTOR_AGENT if any(a.name == TUTOR_AGENT for a in settings.agents) else None
    note = body.page_note()
    turn = await conversations.start(
        body.message.content,
        conversation_id=body.session_id or body.thread_id or body.conversation_id,
        agent=agent,
        context=[] if note is None else [ChatMessage(role="system", content=f"Where the reader is: {note}")],
        principal=principal_of(request),
    )
    return await stream_run(settings, turn.run, _TutorEvents(turn, body.message.id))
