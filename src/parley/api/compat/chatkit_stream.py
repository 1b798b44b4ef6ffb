"""A reply's events in ChatKit's stream protocol, as its official front end reads them.

In order: (`thread.created` for a new thread,) `thread.item.done` with the user's message,
`stream_options`, `thread.item.added` with the empty assistant message, `thread.item.updated`
with `assistant_message.content_part.added`, one `…content_part.text_delta` per piece of text,
then `…content_part.done` and `thread.item.done` with the whole answer; or an `error` event last
if the reply fails after the stream started. Every line is `data: <JSON>` and a blank line.

Text deltas, one per token, are framed straight from their text; the other events are built
with the `openai-chatkit` package's types.
"""

from __future__ import annotations

from datetime import datetime

import orjson
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    ErrorEvent,
    Page,
    StreamOptions,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    UserMessageItem,
)
from pydantic import BaseModel

from parley.api.compat.chatkit_items import assistant_item, dump
from parley.chat.turns import Turn
from parley.errors import ParleyError
from parley.events import EventBatch, TextDelta


def _line(event: BaseModel) -> bytes:
    return b"data: " + dump(event) + b"\n\n"


class ChatKitEvents:
    """The StreamFormat of one ChatKit turn (see `parley.api.streaming.StreamFormat`)."""

    def __init__(self, turn: Turn, user_message: UserMessageItem, *, new_thread: ThreadMetadata | None = None) -> None:
        self._turn = turn
        self._created_at: datetime = user_message.created_at
        opening: list[BaseModel] = (
            [] if new_thread is None else [ThreadCreatedEvent(thread=Thread(**new_thread.model_dump(), items=Page()))]
        )
        opening += [
            ThreadItemDoneEvent(item=user_message),
            # The front end's stop button closes the stream, which cancels the run (its text is kept).
            StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True)),
            ThreadItemAddedEvent(item=assistant_item(turn.message_id, turn.conversation_id, None, self._created_at)),
            ThreadItemUpdatedEvent(
                item_id=turn.message_id,
                update=AssistantMessageContentPartAdded(content_index=0, content=AssistantMessageContent(text="")),
            ),
        ]
        self._opening = b"".join(map(_line, opening))
        self._delta_head = (
            b'data: {"type":"thread.item.updated","item_id":'
            + orjson.dumps(turn.message_id)
            + b',"update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":'
        )

    def opening(self) -> bytes:
        return self._opening

    def encode(self, batch: EventBatch) -> bytes:
        return b"".join(
            self._delta_head + orjson.dumps(event.text) + b"}}\n\n"
            for event in batch
            if type(event) is TextDelta and event.text
        )

    def closing(self) -> bytes:
        turn = self._turn
        answer = AssistantMessageContent(text=turn.run.text)
        done = AssistantMessageContentPartDone(content_index=0, content=answer)
        item = assistant_item(turn.message_id, turn.conversation_id, turn.run.text, self._created_at)
        return _line(ThreadItemUpdatedEvent(item_id=turn.message_id, update=done)) + _line(
            ThreadItemDoneEvent(item=item)
        )

    def error(self, error: ParleyError) -> bytes:
        # No retry offered: `threads.retry_after_item` is not served (see parley.api.compat.chatkit).
        return _line(ErrorEvent(code="custom", message=error.message, allow_retry=False))
