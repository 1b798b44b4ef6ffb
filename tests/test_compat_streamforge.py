"""StreamForge's front end against Parley: `POST /chat` as a stream of plain-text SSE events,
session memory by `session_id`, and its health and root routes, exactly as its client reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley

MODELS = [
    {"name": "echo", "provider": "fake", "chunk_chars": 3},
    {"name": "thinker", "provider": "fake", "replies": ["Four."], "reasoning": "two plus two"},
]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_parley(models=MODELS) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def text_events(http: httpx.Client, body: dict[str, object]) -> list[str]:
    """What a StreamForge client reads: each event's data, which is the text itself."""
    with connect_sse(http, "POST", "/chat", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = list(source.iter_sse())
    assert all(event.event == "message" for event in events), "StreamForge's events have no names"
    return [event.data for event in events]


def test_chat_streams_the_answer_as_plain_text_pieces(http: httpx.Client) -> None:
    pieces = text_events(http, {"message": "Tell me a story"})
    assert len(pieces) > 1, "the answer arrives in pieces, not at once"
    assert "".join(pieces) == "Tell me a story"


def test_the_raw_stream_is_data_lines_only(http: httpx.Client) -> None:
    reply = http.post("/chat", json={"message": "abcdef"})
    assert reply.text == "data: abc\n\ndata: def\n\n"


def test_text_with_line_breaks_survives_the_event_framing(http: httpx.Client) -> None:
    assert "".join(text_events(http, {"message": "one\ntwo\r\nthree"})) == "one\ntwo\nthree"


def test_reasoning_is_never_sent(http: httpx.Client) -> None:
    assert "".join(text_events(http, {"message": "2+2?", "model": "thinker"})) == "Four."


def test_a_session_keeps_its_history(http: httpx.Client) -> None:
    text_events(http, {"message": "my name is Ada", "session_id": "sf-history-1"})
    text_events(http, {"message": "what is my name?", "session_id": "sf-history-1"})
    history = http.get("/chat/history/sf-history-1").json()
    assert history["session_id"] == "sf-history-1"
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "my name is Ada"),
        ("assistant", "my name is Ada"),
        ("user", "what is my name?"),
        ("assistant", "what is my name?"),
    ]
    assert all(m["created_at"].endswith("Z") for m in history["messages"])


def test_an_unknown_session_has_no_messages(http: httpx.Client) -> None:
    assert http.get("/chat/history/never-used").json() == {"session_id": "never-used", "messages": []}


def test_health_routes_answer_in_streamforge_shapes(http: httpx.Client) -> None:
    assert http.get("/chat/health").json() == {"service": "chat", "status": "healthy", "streaming": "enabled"}
    health = http.get("/health").json()
    assert {key: health[key] for key in ("status", "service", "version")} == {
        "status": "healthy",
        "service": "parley",
        "version": "0.1.0",
    }
    root = http.get("/").json()
    assert (root["name"], root["version"], root["status"]) == ("Parley", "0.1.0", "running")
    assert root["endpoints"]["chat"] == "/chat"
    assert root["endpoints"]["health"] == "/chat/health"


def test_bad_input_is_a_400_in_the_openai_shape(http: httpx.Client) -> None:
    for body in ({}, {"message": ""}, {"message": 5}, {"message": "hi", "session_id": "bad id"}):
        reply = http.post("/chat", json=body)
        assert reply.status_code == 400, body
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_an_unknown_model_is_a_404_before_the_stream(http: httpx.Client) -> None:
    reply = http.post("/chat", json={"message": "hi", "model": "gpt-9"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


def test_a_failure_mid_stream_ends_with_an_error_event(http: httpx.Client) -> None:
    with (
        running_parley(
            models=[{"name": "text", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            stream_head_wait_seconds=0,
        ) as url,
        httpx.Client(base_url=url) as client,
        connect_sse(client, "POST", "/chat", json={"message": "hi"}) as s,
    ):
        events = list(s.iter_sse())
    assert [event.event for event in events] == ["error"]
    assert json.loads(events[0].data)["error"]["code"] == "upstream_error"
