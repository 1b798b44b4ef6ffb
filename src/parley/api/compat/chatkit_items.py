"""ChatKit threads and items as views of Parley's conversations and messages.

A thread is a conversation (same id, title, creation time); its items are the conversation's user
and assistant messages, in order, with the messages' ids. A user message's text is what ChatKit's
composer sent: its text parts (a tag by its text) after any quoted text; that is also what the
model reads and what the store keeps, so items read back hold one `input_text` part.
"""

from __future__ import annotations

from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    Page,
    Thread,
    ThreadItem,
    ThreadMetadata,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)
from pydantic import BaseModel

from parley.errors import InvalidRequest
from parley.store.records import ConversationRecord, ConversationSummary, MessageRecord

DEFAULT_PAGE_SIZE = 20  # as ChatKit's own server


def input_text(user_input: UserMessageInput) -> str:
    """The text of a ChatKit composer's message, as the model reads it and the store keeps it."""
    if user_input.attachments:
        raise InvalidRequest(
            "attachments are not supported by this server; send text only", param="params.input.attachments"
        )
    text = "".join(part.text for part in user_input.content)
    if user_input.quoted_text:
        quoted = "\n".join(f"> {line}" for line in user_input.quoted_text.splitlines())
        text = f"{quoted}\n\n{text}"
    if not text.strip():
        raise InvalidRequest("the message has no text", param="params.input.content")
    return text


def thread_metadata(conversation: ConversationSummary) -> ThreadMetadata:
    return ThreadMetadata(id=conversation.id, title=conversation.title, created_at=conversation.created_at)


def thread(conversation: ConversationRecord) -> Thread:
    """The thread with its first page of items, as ChatKit's `threads.get_by_id` answers."""
    return Thread(
        **thread_metadata(conversation).model_dump(),
        items=items_page(conversation, limit=DEFAULT_PAGE_SIZE, order="asc", after=None),
    )


def items_page(conversation: ConversationRecord, *, limit: int, order: str, after: str | None) -> Page[ThreadItem]:
    items = [item for message in conversation.messages if (item := thread_item(message)) is not None]
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        position = next((i for i, item in enumerate(items) if item.id == after), None)
        if position is None:
            raise InvalidRequest(f"no item {after[:200]!r} in this thread", param="params.after", code="invalid_value")
        start = position + 1
    page = items[start : start + limit]
    has_more = start + limit < len(items)
    return Page(data=page, has_more=has_more, after=page[-1].id if has_more and page else None)


def thread_item(message: MessageRecord) -> ThreadItem | None:
    """A stored message as a ChatKit item; None for messages ChatKit doesn't show (system, tool)."""
    if message.role == "user":
        return user_item(message.id, message.conversation_id, message.content, message.created_at)
    if message.role == "assistant":
        return assistant_item(message.id, message.conversation_id, message.content, message.created_at)
    return None


def user_item(item_id: str, thread_id: str, text: str, created_at: object) -> UserMessageItem:
    return UserMessageItem.model_validate(
        {
            "id": item_id,
            "thread_id": thread_id,
            "created_at": created_at,
            "content": [UserMessageTextContent(text=text)],
            "inference_options": InferenceOptions(),
        }
    )


def assistant_item(item_id: str, thread_id: str, text: str | None, created_at: object) -> AssistantMessageItem:
    """An assistant message; `text` None while it has no content part yet (the start of a stream)."""
    content = [] if text is None else [AssistantMessageContent(text=text)]
    return AssistantMessageItem.model_validate(
        {"id": item_id, "thread_id": thread_id, "created_at": created_at, "content": content}
    )


def dump(model: BaseModel) -> bytes:
    """JSON as ChatKit's own server writes it (no nulls, no integration-only metadata)."""
    return model.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True}).encode()
