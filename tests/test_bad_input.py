"""Bad requests get a clear 4xx in the OpenAI error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import running_parley

MODELS = [{"name": "echo", "provider": "fake"}]
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_parley(models=MODELS, max_body_bytes=64 * 1024) as url, httpx.Client(base_url=url) as client:
        yield client


def assert_openai_error(reply: httpx.Response, status: int, *, mentions: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert mentions.lower() in error["message"].lower(), error["message"]
    result: dict[str, Any] = error
    return result


def test_invalid_json(http: httpx.Client) -> None:
    reply = http.post("/v1/chat/completions", content=b'{"model": "echo", ', headers=_json())
    error = assert_openai_error(reply, 400, mentions="not valid JSON")
    assert error["type"] == "invalid_request_error"


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    assert_openai_error(
        http.post("/v1/chat/completions", json=["echo"]), 400, mentions="must be a JSON object, not an array"
    )


def test_unknown_model(http: httpx.Client) -> None:
    reply = http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER})
    error = assert_openai_error(reply, 404, mentions="'gpt-9' does not exist")
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("messages", "param", "mentions"),
    [
        ([], "messages", "at least 1"),
        ("hello", "messages", "valid list"),
        ([{"content": "no role"}], "messages.0.role", "required"),
        ([{"role": "wizard", "content": "x"}], "messages.0.role", "'user'"),
        ([{"role": "user"}], "messages.0", "needs content"),
        ([{"role": "user", "content": 42}], "messages.0.content", "valid string"),
        ([{"role": "tool", "content": "42"}], "messages.0", "tool_call_id"),
        ([{"role": "assistant"}], "messages.0", "content or tool_calls"),
    ],
)
def test_malformed_messages(http: httpx.Client, messages: object, param: str, mentions: str) -> None:
    reply = http.post("/v1/chat/completions", json={"model": "echo", "messages": messages})
    error = assert_openai_error(reply, 400, mentions=mentions)
    assert error["param"] == param


@pytest.mark.parametrize(
    ("field", "value", "mentions"),
    [
        ("temperature", "hot", "valid number"),
        ("temperature", 3, "less than or equal to 2"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("n", 2, "less than or equal to 1"),
        ("stream", "sometimes", "valid boolean"),
        ("stop", 7, "valid"),
        ("tools", [{"type": "function"}], "required"),
    ],
)
def test_wrong_types_and_ranges(http: httpx.Client, field: str, value: object, mentions: str) -> None:
    reply = http.post("/v1/chat/completions", json={"model": "echo", "messages": USER, field: value})
    error = assert_openai_error(reply, 400, mentions=mentions)
    assert error["param"] is not None and error["param"].startswith(field)


def test_tools_on_a_model_without_tools(http: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    reply = http.post("/v1/chat/completions", json={"model": "echo", "messages": USER, "tools": [tool]})
    error = assert_openai_error(reply, 400, mentions="does not support tools")
    assert error["param"] == "tools"


def test_oversized_body_with_length(http: httpx.Client) -> None:
    big = [{"role": "user", "content": "x" * 70_000}]
    reply = http.post("/v1/chat/completions", json={"model": "echo", "messages": big})
    error = assert_openai_error(reply, 413, mentions="larger than the limit of 65536 bytes")
    assert error["code"] == "payload_too_large"


def test_oversized_chunked_body(http: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}]}'

    reply = http.post("/v1/chat/completions", content=body(), headers=_json())
    assert_openai_error(reply, 413, mentions="larger than the limit")


def test_chunked_body_within_the_limit_is_served(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/chat/completions",
        content=iter([b'{"model": "echo", ', b'"messages": [{"role": "user", "content": "ok"}]}']),
        headers=_json(),
    )
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize(
    ("body", "param", "mentions"),
    [
        ({}, "message", "required"),
        ({"message": ""}, "message", "at least 1 character"),
        ({"message": "hi", "model": "nope"}, "model", "'nope' does not exist"),
        ({"message": "hi", "agent": "nobody"}, "agent", "'nobody' does not exist"),
        ({"message": "hi", "surprise": True}, "surprise", "not permitted"),
    ],
)
def test_chat_api_bad_bodies(http: httpx.Client, body: dict[str, object], param: str, mentions: str) -> None:
    reply = http.post("/api/chat", json=body)
    assert 400 <= reply.status_code < 500
    error = assert_openai_error(reply, reply.status_code, mentions=mentions)
    assert error["param"] == param


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404, mentions="not found")
    assert_openai_error(http.get("/v1/chat/completions"), 405, mentions="method not allowed")


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}
