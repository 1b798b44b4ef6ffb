"""`POST /api/chat`: named SSE events for front ends, or one JSON reply."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley

MODELS = [
    {"name": "echo", "provider": "fake", "chunk_chars": 3},
    {"name": "thinker", "provider": "fake", "replies": ["The answer is 4."], "reasoning": "2 plus 2 is 4"},
]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_parley(models=MODELS) as url, httpx.Client(base_url=url) as client:
        yield client


def stream_events(http: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with connect_sse(http, "POST", "/api/chat", json=body) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["x-accel-buffering"] == "no"
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def test_stream_events_in_order(http: httpx.Client) -> None:
    events = stream_events(http, {"message": "hello, parley"})
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "message_complete"
    assert set(names[1:-1]) == {"text_delta"}
    start, complete = events[0][1], events[-1][1]
    assert start["model"] == "echo"
    assert start["conversation_id"].startswith("conv_")
    assert start["message_id"] == complete["message_id"]
    assert "".join(data["text"] for name, data in events if name == "text_delta") == "hello, parley"
    assert complete["finish_reason"] == "stop"
    assert complete["usage"]["completion_tokens"] > 0
    assert complete["timing"]["total_ms"] >= complete["timing"]["time_to_first_token_ms"] >= 0


def test_reasoning_arrives_before_the_answer(http: httpx.Client) -> None:
    events = stream_events(http, {"message": "what is 2+2?", "model": "thinker"})
    names = [name for name, _ in events]
    assert names.index("reasoning_delta") < names.index("text_delta")
    reasoning = "".join(data["text"] for name, data in events if name == "reasoning_delta")
    answer = "".join(data["text"] for name, data in events if name == "text_delta")
    assert (reasoning, answer) == ("2 plus 2 is 4", "The answer is 4.")


def test_conversation_id_is_kept(http: httpx.Client) -> None:
    events = stream_events(http, {"message": "again", "conversation_id": "conv_mine"})
    assert events[0][1]["conversation_id"] == "conv_mine"


def test_json_reply_when_not_streaming(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"message": "what is 2+2?", "model": "thinker", "stream": False})
    assert reply.status_code == 200
    body = reply.json()
    assert body["content"] == "The answer is 4."
    assert body["reasoning"] == "2 plus 2 is 4"
    assert body["finish_reason"] == "stop"
    assert body["tool_calls"] == []
    assert body["conversation_id"].startswith("conv_") and body["message_id"].startswith("msg_")


def test_max_tokens_cuts_the_reply(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"message": "a long message " * 10, "max_tokens": 2, "stream": False})
    body = reply.json()
    assert body["finish_reason"] == "length"
    assert len(body["content"]) <= 8


def test_every_event_is_in_the_openapi_schema(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in (
        "MessageStart",
        "TextDeltaOut",
        "ReasoningDeltaOut",
        "ToolCallOut",
        "MessageComplete",
        "ErrorOut",
    ):
        assert name in components, name
    chat = schema["paths"]["/api/chat"]["post"]
    content = chat["responses"]["200"]["content"]
    assert "text/event-stream" in content and "application/json" in content
    completions = schema["paths"]["/v1/chat/completions"]["post"]
    body = completions["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"model", "messages", "stream", "tools"} <= set(components[body]["properties"])
    references = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert references <= set(components), references - set(components)
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=utf-8"])
def test_a_body_is_read_as_json_whatever_its_content_type_says(http: httpx.Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    reply = http.post("/api/chat", content=b'{"message": "hello", "stream": false}', headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "hello"


def test_a_malformed_idempotency_key_is_refused_by_name(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"message": "hi"}, headers={"Idempotency-Key": "has a space"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "header.Idempotency-Key" and error["code"] == "string_pattern_mismatch"
