"""`POST /chatkit`: OpenAI's ChatKit server protocol, driven with requests built from the
`openai-chatkit` package's types and answers read back into those types, as ChatKit's front end does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chatkit.types import (
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    AttachmentCreateParams,
    AttachmentsCreateReq,
    ErrorEvent,
    InferenceOptions,
    ItemsListParams,
    ItemsListReq,
    Page,
    StreamOptionsEvent,
    Thread,
    ThreadAddUserMessageParams,
    ThreadCreatedEvent,
    ThreadCreateParams,
    ThreadDeleteParams,
    ThreadGetByIdParams,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadListParams,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsDeleteReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadStreamEvent,
    ThreadsUpdateReq,
    ThreadUpdateParams,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)
from pydantic import BaseModel, TypeAdapter

from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream

EVENTS: TypeAdapter[Any] = TypeAdapter(ThreadStreamEvent)
THREADS = TypeAdapter(Page[Thread])
ITEMS = TypeAdapter(Page[ThreadItem])


@pytest.fixture(scope="module")
def http(upstream: Upstream) -> Iterator[httpx.Client]:
    models = [
        {"name": "echo", "provider": "fake", "chunk_chars": 3},
        {"name": "thinker", "provider": "fake", "replies": ["The answer is 4."], "reasoning": "2 plus 2"},
        {"name": "up", "provider": "openai", "base_url": f"{upstream.base_url}/v1", "model": "text"},
        {"name": "failing", "provider": "openai", "base_url": f"{upstream.base_url}/v1", "model": "error-mid"},
    ]
    with running_parley(models=models) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def user_input(text: str, model: str | None = None) -> UserMessageInput:
    return UserMessageInput(
        content=[UserMessageTextContent(text=text)], attachments=[], inference_options=InferenceOptions(model=model)
    )


def post(http: httpx.Client, request: BaseModel) -> httpx.Response:
    return http.post("/chatkit", content=request.model_dump_json(), headers={"Content-Type": "application/json"})


def stream(http: httpx.Client, request: BaseModel) -> list[Any]:
    """A streamed request's events, as ChatKit's front end reads them: `data:` lines, one event each."""
    with http.stream(
        "POST", "/chatkit", content=request.model_dump_json(), headers={"Content-Type": "application/json"}
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        return [EVENTS.validate_json(line[6:]) for line in reply.iter_lines() if line.startswith("data: ")]


def create(http: httpx.Client, text: str, model: str | None = None) -> list[Any]:
    return stream(http, ThreadsCreateReq(params=ThreadCreateParams(input=user_input(text, model))))


def reply_text(events: list[Any]) -> str:
    return "".join(
        e.update.delta
        for e in events
        if isinstance(e, ThreadItemUpdatedEvent) and isinstance(e.update, AssistantMessageContentPartTextDelta)
    )


def test_a_new_thread_streams_as_the_chatkit_front_end_expects(http: httpx.Client) -> None:
    events = create(http, "What is a humanoid robot?")
    created, user_done, options, added, part_added, *deltas, part_done, done = events
    assert isinstance(created, ThreadCreatedEvent)
    thread_id = created.thread.id
    assert created.thread.title == "What is a humanoid robot?"
    assert isinstance(user_done, ThreadItemDoneEvent) and isinstance(user_done.item, UserMessageItem)
    assert user_done.item.thread_id == thread_id
    assert user_done.item.content == [UserMessageTextContent(text="What is a humanoid robot?")]
    assert isinstance(options, StreamOptionsEvent) and options.stream_options.allow_cancel
    assert isinstance(added, ThreadItemAddedEvent) and isinstance(added.item, AssistantMessageItem)
    reply_id = added.item.id
    assert isinstance(part_added, ThreadItemUpdatedEvent)
    assert isinstance(part_added.update, AssistantMessageContentPartAdded)
    assert len(deltas) > 1
    assert all(e.item_id == reply_id for e in deltas)
    assert isinstance(part_done, ThreadItemUpdatedEvent)
    assert isinstance(part_done.update, AssistantMessageContentPartDone)
    assert isinstance(done, ThreadItemDoneEvent) and isinstance(done.item, AssistantMessageItem)
    assert done.item.id == reply_id
    assert reply_text(events) == done.item.content[0].text == "What is a humanoid robot?"
    # The thread is a Parley conversation, with the same ids.
    stored = http.get(f"/api/conversations/{thread_id}").json()
    assert [m["id"] for m in stored["messages"]] == [user_done.item.id, reply_id]


def test_a_thread_keeps_its_history_for_the_model(http: httpx.Client, upstream: Upstream) -> None:
    first = create(http, "Remember the word zebra.", model="up")
    thread_id = first[0].thread.id
    second = stream(
        http,
        ThreadsAddUserMessageReq(
            params=ThreadAddUserMessageParams(thread_id=thread_id, input=user_input("Which word?", model="up"))
        ),
    )
    assert not any(isinstance(e, ThreadCreatedEvent) for e in second)
    assert reply_text(second) == TEXT_REPLY
    assert upstream.find("Which word?").body["messages"] == [
        {"role": "user", "content": "Remember the word zebra."},
        {"role": "assistant", "content": TEXT_REPLY},
        {"role": "user", "content": "Which word?"},
    ]
    # Read back: the thread with its items, in order, with the ids they streamed with.
    thread = Thread.model_validate_json(
        post(http, ThreadsGetByIdReq(params=ThreadGetByIdParams(thread_id=thread_id))).text
    )
    streamed = [e.item.id for e in first + second if isinstance(e, ThreadItemDoneEvent)]
    assert [item.id for item in thread.items.data] == streamed
    assert thread.title == "Remember the word zebra."
    newest = ITEMS.validate_json(post(http, ItemsListReq(params=ItemsListParams(thread_id=thread_id, limit=3))).text)
    assert [item.id for item in newest.data] == streamed[::-1][:3] and newest.has_more
    rest = ItemsListReq(params=ItemsListParams(thread_id=thread_id, limit=3, after=newest.after))
    assert [item.id for item in ITEMS.validate_json(post(http, rest).text).data] == streamed[:1]


def test_threads_are_listed_newest_first_page_by_page(http: httpx.Client) -> None:
    ids = [create(http, f"thread {n}")[0].thread.id for n in range(3)]
    first = THREADS.validate_json(post(http, ThreadsListReq(params=ThreadListParams(limit=2))).text)
    assert [t.id for t in first.data] == ids[::-1][:2] and first.has_more
    second = THREADS.validate_json(post(http, ThreadsListReq(params=ThreadListParams(limit=1, after=first.after))).text)
    assert [t.id for t in second.data] == ids[:1]


def test_a_thread_is_renamed_and_deleted(http: httpx.Client) -> None:
    thread_id = create(http, "rename me")[0].thread.id
    renamed = post(http, ThreadsUpdateReq(params=ThreadUpdateParams(thread_id=thread_id, title="Balance control")))
    assert Thread.model_validate_json(renamed.text).title == "Balance control"
    get = ThreadsGetByIdReq(params=ThreadGetByIdParams(thread_id=thread_id))
    assert Thread.model_validate_json(post(http, get).text).title == "Balance control"
    assert post(http, ThreadsDeleteReq(params=ThreadDeleteParams(thread_id=thread_id))).json() == {}
    gone = post(http, get)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "conversation_not_found"


def test_a_message_to_a_thread_that_does_not_exist_is_404(http: httpx.Client) -> None:
    thread_id = f"thr_{uuid.uuid4().hex[:8]}"
    request = ThreadsAddUserMessageReq(params=ThreadAddUserMessageParams(thread_id=thread_id, input=user_input("hi")))
    reply = post(http, request)
    assert reply.status_code == 404
    assert http.get(f"/api/conversations/{thread_id}").status_code == 404  # and none was made


def test_the_front_end_picks_the_model(http: httpx.Client) -> None:
    assert reply_text(create(http, "what is 2+2?", model="thinker")) == "The answer is 4."
    unknown = post(http, ThreadsCreateReq(params=ThreadCreateParams(input=user_input("hi", model="gpt-9"))))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_a_failure_mid_reply_ends_the_stream_with_an_error_event(http: httpx.Client) -> None:
    events = create(http, "this will fail", model="failing")
    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].message and not events[-1].allow_retry
    assert reply_text(events)  # what came before the failure was streamed


def test_what_the_server_does_not_serve_is_refused_in_openai_shape(http: httpx.Client) -> None:
    attach = AttachmentsCreateReq(params=AttachmentCreateParams(name="a.png", size=10, mime_type="image/png"))
    refused = post(http, attach)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_request"
    with_file = user_input("look")
    with_file.attachments = ["atc_1"]
    assert post(http, ThreadsCreateReq(params=ThreadCreateParams(input=with_file))).status_code == 400
    loose = {"type": "threads.get_by_id", "params": {"thread_id": 5}}  # JSON types as sent: 5 is no id
    for body in (b"{}", b'{"type": "threads.create"}', b"not json", json.dumps(loose).encode()):
        reply = http.post("/chatkit", content=body)
        assert reply.status_code == 400
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
