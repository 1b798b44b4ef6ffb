"""`POST /chatkit`: OpenAI's ChatKit server protocol, over Parley's stored conversations.

The official ChatKit front end (`@openai/chatkit`, `api: {url, domainKey}`) posts every request
here; requests are parsed, and answers built, with the `openai-chatkit` package's types. A
thread is a conversation and its items are the conversation's messages (`chatkit_items`);
replies are ordinary conversation turns (`ConversationChat.start`), streamed in ChatKit's event
protocol (`chatkit_stream`). The package's own `ChatKitServer` is not used: it saves items
through its `Store` and produces replies with the OpenAI Agents SDK, a second chat path.

Served: `threads.create`, `threads.add_user_message` (streamed), `threads.get_by_id`,
`threads.list` (newest first), `items.list`, `threads.update`, `threads.delete`, and
`items.feedback` (written to the server log). Refused with 400 `unsupported_request`: attachments
(`attachments.create`/`.delete`; no file store), `input.transcribe` (no speech model),
`threads.retry_after_item` (the store keeps a conversation's messages; it doesn't delete the ones
after a message), and client tools, structured input and widget actions
(`threads.add_client_tool_output`, `.add_structured_input`, `.custom_action`,
`.sync_custom_action`), which only follow items Parley never sends.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from chatkit.types import (
    ChatKitReq,
    ItemsFeedbackReq,
    ItemsListReq,
    Page,
    Thread,
    ThreadMetadata,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsDeleteReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadsUpdateReq,
    UserMessageInput,
)
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from parley.access.principal import principal_of
from parley.api.compat import chatkit_doc
from parley.api.compat import chatkit_items as items
from parley.api.compat.chatkit_stream import ChatKitEvents
from parley.api.deps import ConversationChatDep, StoreDep
from parley.api.input_limits import is_conversation_id, loads_object
from parley.api.streaming import stream_run
from parley.chat.turns import ConversationChat
from parley.errors import InvalidRequest
from parley.logs import current_request_id
from parley.store import ConversationStore, title_from
from parley.store.errors import ConversationNotFound

log = logging.getLogger("parley.chatkit")
router = APIRouter(tags=["ChatKit server protocol"])

_REQUESTS: TypeAdapter[Any] = TypeAdapter(ChatKitReq)


@router.post("/chatkit", response_model=None, openapi_extra=chatkit_doc.OPENAPI)
async def chatkit(request: Request, conversations: ConversationChatDep, store: StoreDep) -> Response:
    """One ChatKit request: thread and item requests answer JSON, messages stream ChatKit events."""
    body = loads_object(await request.body(), max_depth=request.app.state.settings.max_json_depth)
    try:
        parsed = _REQUESTS.validate_python(body, strict=True)  # JSON types as sent: 0 is no boolean
    except ValidationError as exc:
        raise _invalid(exc) from None
    owner = principal_of(request).owner  # another owner's thread is one that doesn't exist
    if isinstance(parsed, ThreadsCreateReq | ThreadsAddUserMessageReq):
        return await _respond(request, parsed, conversations, store)
    if isinstance(parsed, ThreadsGetByIdReq):
        return _json(items.thread(await store.get_conversation(_thread_id(parsed.params.thread_id), owner=owner)))
    if isinstance(parsed, ThreadsListReq):
        return _json(await _threads(store, parsed, owner))
    if isinstance(parsed, ItemsListReq):
        params = parsed.params
        conversation = await store.get_conversation(_thread_id(params.thread_id), owner=owner)
        limit = params.limit if params.limit is not None else items.DEFAULT_PAGE_SIZE
        return _json(items.items_page(conversation, limit=max(limit, 0), order=params.order, after=params.after))
    if isinstance(parsed, ThreadsUpdateReq):
        renamed = await store.rename(_thread_id(parsed.params.thread_id), parsed.params.title, owner=owner)
        return _json(Thread(**items.thread_metadata(renamed).model_dump(), items=Page()))
    if isinstance(parsed, ThreadsDeleteReq):
        await store.delete(_thread_id(parsed.params.thread_id), owner=owner)
        return _json(None)
    if isinstance(parsed, ItemsFeedbackReq):
        feedback = parsed.params
        log.info(
            "%s feedback %s on %s of thread %s",
            current_request_id(),
            feedback.kind,
            feedback.item_ids,
            feedback.thread_id,
        )
        return _json(None)
    raise InvalidRequest(
        f"'{parsed.type}' requests are not supported by this server", param="type", code="unsupported_request"
    )


async def _respond(
    request: Request,
    parsed: ThreadsCreateReq | ThreadsAddUserMessageReq,
    conversations: ConversationChat,
    store: ConversationStore,
) -> Response:
    """A user's message and the streamed reply: to a new thread, or to one that exists."""
    user_input: UserMessageInput = parsed.params.input
    text = items.input_text(user_input)
    thread_id = None
    principal = principal_of(request)
    if isinstance(parsed, ThreadsAddUserMessageReq):
        thread_id = _thread_id(parsed.params.thread_id)
        # A thread that doesn't exist (or is another owner's) is a 404, not a new one.
        await store.get_conversation(thread_id, owner=principal.owner)
    turn = await conversations.start(
        text,
        conversation_id=thread_id,
        model=user_input.inference_options.model,
        principal=principal,
    )
    now = datetime.now(UTC)
    user_message = items.user_item(turn.user_message_id, turn.conversation_id, text, now)
    new_thread = None
    if thread_id is None:
        new_thread = ThreadMetadata(id=turn.conversation_id, title=title_from(text), created_at=now)
    return await stream_run(
        request.app.state.settings, turn.run, ChatKitEvents(turn, user_message, new_thread=new_thread)
    )


async def _threads(store: ConversationStore, parsed: ThreadsListReq, owner: str | None) -> Page[Thread]:
    params = parsed.params
    if params.order != "desc":
        raise InvalidRequest("threads are listed newest first only: order must be 'desc'", param="params.order")
    page = await store.list_conversations(
        limit=params.limit if params.limit is not None else items.DEFAULT_PAGE_SIZE, cursor=params.after, owner=owner
    )
    return Page(
        data=[Thread(**items.thread_metadata(c).model_dump(), items=Page()) for c in page.items],
        has_more=page.next_cursor is not None,
        after=page.next_cursor,
    )


def _thread_id(thread_id: str) -> str:
    """A thread id from a request; one no conversation can have is simply not found."""
    if not is_conversation_id(thread_id):
        raise ConversationNotFound(thread_id[:200])
    return thread_id


def _json(model: BaseModel | None) -> Response:
    return Response(b"{}" if model is None else items.dump(model), media_type="application/json")


def _invalid(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    # (the union's member, named by its `type`, is left out of the location)
    where = ".".join(str(part) for part in first["loc"] if "." not in str(part))
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return InvalidRequest(message, param=where or None, code="invalid_value")
