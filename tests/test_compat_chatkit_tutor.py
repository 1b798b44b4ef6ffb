"""`POST /chatkit/api`: the ChatKit tutor widget's requests, read back as the widget reads them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream

TUTOR_PROMPT = (
    "You are a friendly AI tutor for a robotics textbook. Explain:, Translate to Urdu:, Summarize: are actions."
)


@pytest.fixture(scope="module")
def plain() -> Iterator[httpx.Client]:
    """No `tutor` agent configured: the default model (an echo) answers."""
    models = [{"name": "echo", "provider": "fake", "chunk_chars": 3}]
    with running_parley(models=models) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def tutored(upstream: Upstream) -> Iterator[httpx.Client]:
    """A `tutor` agent on the scripted upstream, next to a default echo model and a failing model."""
    models = [
        {"name": "echo", "provider": "fake"},
        {"name": "up", "provider": "openai", "base_url": f"{upstream.base_url}/v1", "model": "text"},
    ]
    agents = [{"name": "tutor", "system_prompt": TUTOR_PROMPT, "model": "up"}]
    with running_parley(models=models, agents=agents) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def widget_request(content: str, **extra: Any) -> dict[str, Any]:
    return {"type": "user_message", "message": {"id": str(uuid.uuid4()), "content": content}, **extra}


def send(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST as the widget does and read its events as it does: `data: ` lines, each a JSON object."""
    reply = client.post("/chatkit/api", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in reply.text.split("\n") if line.startswith("data: ")]


def answer(events: list[dict[str, Any]]) -> str:
    return "".join(event["content"] for event in events if event["type"] == "text_delta")


def test_the_answer_streams_as_text_deltas_then_message_complete(plain: httpx.Client) -> None:
    body = widget_request("What is ROS 2?")
    events = send(plain, body)
    assert [e["type"] for e in events[:-1]] == ["text_delta"] * (len(events) - 1)
    assert len(events) > 2  # the echo came in pieces
    complete = events[-1]
    assert complete["type"] == "message_complete" and complete["done"] is True
    assert answer(events) == "What is ROS 2?"
    assert all(e["done"] is False for e in events[:-1])
    assert {e["message_id"] for e in events} == {complete["message_id"]}
    assert {e["messageId"] for e in events} == {body["message"]["id"]}
    assert complete["conversation_id"].startswith("conv_")


def test_the_page_the_reader_is_on_reaches_the_model(tutored: httpx.Client, upstream: Upstream) -> None:
    page = {"url": "/docs/module-1/ros2-basics", "title": "ROS 2 Basics"}
    events = send(tutored, widget_request("page-1: can you explain this?", page_context=page))
    sent = upstream.find("page-1").body["messages"]
    assert sent[0] == {"role": "system", "content": TUTOR_PROMPT}
    assert sent[1] == {
        "role": "system",
        "content": "Where the reader is: [Currently viewing: ROS 2 Basics (/docs/module-1/ros2-basics)]",
    }
    assert sent[-1] == {"role": "user", "content": "page-1: can you explain this?"}
    # The widget's own spelling, with the student's name.
    widget = {"pageUrl": "/docs/intro", "pageTitle": "Introduction", "userName": "Ayesha"}
    send(tutored, widget_request("page-2: hi", context=widget))
    assert upstream.find("page-2").body["messages"][1]["content"] == (
        "Where the reader is: [Student's name: Ayesha | Currently viewing: Introduction (/docs/intro)]"
    )
    # What is kept with the conversation is the reader's own message.
    stored = tutored.get(f"/api/conversations/{events[-1]['conversation_id']}").json()["messages"]
    assert stored[0]["content"] == "page-1: can you explain this?"


def test_content_over_2000_characters_is_refused(plain: httpx.Client) -> None:
    reply = plain.post("/chatkit/api", json=widget_request("x" * 2001))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "message.content" and "2000" in error["message"]
    assert answer(send(plain, widget_request("y" * 2000))) == "y" * 2000


@pytest.mark.parametrize(
    "body",
    [
        {"type": "assistant_message", "message": {"id": "1", "content": "Hi"}},
        {"type": "user_message", "message": {"id": "1"}},
        {"type": "user_message", "message": {"id": "1", "content": ""}},
    ],
)
def test_malformed_requests_are_400(plain: httpx.Client, body: dict[str, Any]) -> None:
    reply = plain.post("/chatkit/api", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_each_message_is_its_own_conversation_unless_a_session_is_named(plain: httpx.Client) -> None:
    first = send(plain, widget_request("one"))[-1]["conversation_id"]
    second = send(plain, widget_request("two"))[-1]["conversation_id"]
    assert first != second
    session = f"tutor-{uuid.uuid4().hex}"
    for text in ("What is a LIDAR?", "And an IMU?"):
        assert send(plain, widget_request(text, session_id=session))[-1]["conversation_id"] == session
    stored = plain.get(f"/api/conversations/{session}").json()
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("user", "What is a LIDAR?"),
        ("assistant", "What is a LIDAR?"),
        ("user", "And an IMU?"),
        ("assistant", "And an IMU?"),
    ]


@pytest.mark.parametrize(
    "content", ["Explain: the embodiment hypothesis", "Translate to Urdu: bipedal locomotion", "Summarize: ZMP"]
)
def test_the_tutor_actions_go_to_the_tutor_agent(tutored: httpx.Client, upstream: Upstream, content: str) -> None:
    events = send(tutored, widget_request(content, page_context={"url": "/docs/x", "title": "X"}))
    assert answer(events) == TEXT_REPLY
    seen = upstream.find(content).body["messages"]
    assert seen[0] == {"role": "system", "content": TUTOR_PROMPT}
    assert seen[-1]["content"].startswith(content)
    conversation = tutored.get(f"/api/conversations/{events[-1]['conversation_id']}").json()
    assert conversation["agent"] == "tutor"


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(upstream: Upstream) -> None:
    models = [{"name": "up", "provider": "openai", "base_url": f"{upstream.base_url}/v1", "model": "error-mid"}]
    agents = [{"name": "tutor", "system_prompt": TUTOR_PROMPT}]
    with running_parley(models=models, agents=agents) as url, httpx.Client(base_url=url, timeout=30) as client:
        events = send(client, widget_request("Summarize: anything"))
    assert [e["type"] for e in events] == ["text_delta", "error"]
    error = events[-1]
    assert error["done"] is True
    assert error["content"] == error["error"]["message"] and error["error"]["code"] == "upstream_error"
