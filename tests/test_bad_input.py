"""Bad requests get a clear 4xx in the OpenAI error shape, never a 500, a hang or a cut.

Refused requests store nothing and reach no upstream. The `text` model is a real upstream
(tests/support/upstream.py): what Parley would send it must be something it can serialise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream, new_marker

MODELS = [{"name": "echo", "provider": "fake"}]
USER = [{"role": "user", "content": "hi"}]
DEPTH = 64  # settings.max_json_depth's default


@pytest.fixture(scope="module")
def server(upstream: Upstream) -> Iterator[str]:
    text_model = [m for m in upstream.parley_models() if m["name"] == "text"]
    with running_parley(models=MODELS + text_model, max_body_bytes=64 * 1024) as url:
        yield url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
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


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", {"POST"}),  # the plain route ahead of FastAPI's router
        ("DELETE", "/api/chat", {"POST"}),
        # a route per method in FastAPI, whose own 405 names the first one's only
        ("PUT", "/api/conversations/conv_1", {"GET", "PATCH", "DELETE"}),
        ("OPTIONS", "/api/conversations/conv_1/export", {"GET"}),
        ("POST", "/api/conversations", {"GET"}),
    ],
)
def test_a_405_says_which_methods_are_allowed(http: httpx.Client, method: str, path: str, allowed: set[str]) -> None:
    reply = http.request(method, path)
    assert_openai_error(reply, 405, mentions="method not allowed")
    assert {m.strip() for m in reply.headers["allow"].split(",")} == allowed


# --- numbers a model or the wire can't take -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "mentions"),
    [
        ("max_tokens", 10**30, "integer within 64 bits"),
        ("max_tokens", 1_000_001, "less than or equal to 1000000"),
        ("max_tokens", 2**62, "less than or equal to 1000000"),
        ("max_completion_tokens", 10**30, "integer within 64 bits"),
        ("seed", 2**63, "less than or equal to 9223372036854775807"),
        ("seed", -(2**63) - 1, "integer within 64 bits"),  # read as a float: -2**63, rounded
        ("max_tokens", True, "valid integer"),
        ("max_tokens", "5", "valid integer"),
        ("max_tokens", 5.5, "fractional part"),
        ("n", True, "valid integer"),
        ("temperature", "0.5", "valid number"),
        ("stream", "no", "valid boolean"),
        ("stream", 0, "valid boolean"),
        ("stream_options", {"include_usage": "yes"}, "valid boolean"),
        ("stop", ["a", "b", "c", "d", "e"], "at most 4 stop sequences"),
        ("model", "m" * 60_000, "at most 128 characters"),
    ],
)
def test_v1_refuses_out_of_bounds_and_loose_types(http: httpx.Client, field: str, value: object, mentions: str) -> None:
    marker = new_marker()
    body = {"model": "text", "messages": [{"role": "user", "content": marker}], field: value}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, mentions=mentions)
    assert error["param"] is not None and error["param"].startswith(field)
    assert len(error["message"]) < 500  # a huge value is not echoed back


def test_v1_values_at_the_bounds_reach_the_upstream(http: httpx.Client, upstream: Upstream) -> None:
    marker = new_marker()
    body = {
        "model": "text",
        "messages": [{"role": "user", "content": marker}],
        "max_tokens": 1_000_000,
        "seed": 2**63 - 1,
        "n": 1.0,  # an integer to JSON Schema
        "stop": ["a", "b", "c", "d"],
        "temperature": 0,
    }
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == TEXT_REPLY
    sent = upstream.find(marker).body
    assert (sent["max_tokens"], sent["seed"], sent["stop"]) == (1_000_000, 2**63 - 1, ["a", "b", "c", "d"])


def test_what_the_official_client_sends_is_accepted(server: str, upstream: Upstream) -> None:
    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=30)
    marker = new_marker()
    tool: Any = {
        "type": "function",
        "function": {"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}},
    }
    stream = client.chat.completions.create(
        model="text",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": marker}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        top_p=1,
        max_completion_tokens=64,
        stop=["\n\n", "END"],
        seed=42,
        n=1,
        tools=[tool],
        tool_choice="auto",
        parallel_tool_calls=False,  # unknown to Parley: ignored
        response_format={"type": "text"},
        user="someone",
        metadata={"k": "v"},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == TEXT_REPLY
    sent = upstream.find(marker).body
    assert (sent["seed"], sent["stop"], sent["temperature"]) == (42, ["\n\n", "END"], 0)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat", "/api/conversations/conv_1"])
def test_non_finite_numbers_are_invalid_json(http: httpx.Client, route: str, number: bytes) -> None:
    body = b'{"model": "echo", "message": "hi", "title": "t", "messages": [], "temperature": ' + number + b"}"
    method = "PATCH" if route.startswith("/api/conversations") else "POST"
    before = conversation_ids(http)
    error = assert_openai_error(http.request(method, route, content=body, headers=_json()), 400, mentions="JSON")
    assert error["code"] == "invalid_json"
    assert conversation_ids(http) == before


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat", "/api/conversations/conv_1"])
@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"", "request body is empty"),
        (b"null", "must be a JSON object, not null"),
        (b"[]", "must be a JSON object, not an array"),
        (b'"hi"', "must be a JSON object, not a string"),
        (b'{"message": "\\ud800", "messages": "\\ud800", "title": "\\ud800"}', "no low surrogate"),
        (b'{"message": "hi"', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
    ids=["empty", "null", "array", "string", "lone-surrogate", "cut-short", "not-utf8"],
)
def test_bodies_that_are_not_a_json_object(http: httpx.Client, route: str, body: bytes, mentions: str) -> None:
    method = "PATCH" if route.startswith("/api/conversations") else "POST"
    before = conversation_ids(http)
    error = assert_openai_error(http.request(method, route, content=body, headers=_json()), 400, mentions=mentions)
    assert error["code"] == "invalid_json"
    assert conversation_ids(http) == before


# --- JSON nested too deep -------------------------------------------------------------------------


def nested(levels: int) -> Any:
    """A list nested `levels` deep: [[[...]]]."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "where",
    ["response_format", "tool_choice", "tools", "content_part", "unknown_field"],
)
def test_v1_refuses_json_nested_deeper_than_the_limit(http: httpx.Client, upstream: Upstream, where: str) -> None:
    marker = new_marker()
    body: dict[str, Any] = {"model": "text", "messages": [{"role": "user", "content": marker}]}
    deep = nested(300)
    if where == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": deep}
    elif where == "tool_choice":
        body["tool_choice"] = {"type": "function", "function": deep}
    elif where == "tools":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"x": deep}}}]
    elif where == "content_part":
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": marker, "extra": deep}]}]
    else:
        body["metadata"] = deep  # ignored as unknown, yet parsed: refused all the same
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, mentions="nested deeper than 64")
    assert error["code"] == "json_too_deep"
    assert all(marker not in seen.last_user_text for seen in upstream.requests)


def test_json_nested_beyond_what_the_parser_takes(http: httpx.Client) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000
    for method, route in [("POST", "/v1/chat/completions"), ("POST", "/api/chat"), ("PATCH", "/api/conversations/c")]:
        reply = http.request(method, route, content=deep, headers=_json())
        assert assert_openai_error(reply, 400, mentions="nested deeper")["code"] == "json_too_deep"


def test_json_nested_to_the_limit_goes_upstream(http: httpx.Client, upstream: Upstream) -> None:
    marker = new_marker()
    # the body is level 1 and response_format level 2: the deepest list is level 64
    body = {"model": "text", "messages": [{"role": "user", "content": marker}], "response_format": {"x": nested(62)}}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert upstream.find(marker).body["response_format"] == {"x": nested(62)}
    body["response_format"] = {"x": nested(63)}
    assert_openai_error(http.post("/v1/chat/completions", json=body), 400, mentions="nested deeper than 64")


def test_chat_api_and_rename_refuse_deep_json(http: httpx.Client) -> None:
    before = conversation_ids(http)
    reply = http.post("/api/chat", json={"message": "hi", "model": nested(100)})
    assert assert_openai_error(reply, 400, mentions="nested deeper than 64")["code"] == "json_too_deep"
    reply = http.patch("/api/conversations/conv_1", json={"title": nested(100)})
    assert assert_openai_error(reply, 400, mentions="nested deeper than 64")["code"] == "json_too_deep"
    assert conversation_ids(http) == before


# --- /api/chat: strict types, bounds, conversation ids -----------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "mentions"),
    [
        ("max_tokens", 10**30, "integer within 64 bits"),
        ("max_tokens", 1_000_001, "less than or equal to 1000000"),
        ("max_tokens", True, "valid integer"),
        ("max_tokens", "5", "valid integer"),
        ("temperature", "0.5", "valid number"),
        ("stream", "no", "valid boolean"),
        ("stream", 1, "valid boolean"),
        ("message", 42, "valid string"),
        ("conversation_id", "", "1-128 letters, digits"),
        ("conversation_id", "abc\n", "1-128 letters, digits"),
        ("conversation_id", "a\x00b", "1-128 letters, digits"),
        ("conversation_id", "-starts-with-a-dash", "1-128 letters, digits"),
        ("conversation_id", "c" * 129, "1-128 letters, digits"),
        ("conversation_id", 7, "valid string"),
        ("model", "m" * 60_000, "at most 128 characters"),
        ("agent", "a" * 60_000, "at most 128 characters"),
    ],
)
def test_chat_api_refuses_out_of_bounds_and_loose_types(
    http: httpx.Client, field: str, value: object, mentions: str
) -> None:
    before = conversation_ids(http)
    error = assert_openai_error(http.post("/api/chat", json={"message": "hi", field: value}), 400, mentions=mentions)
    assert error["param"] == field
    assert len(error["message"]) < 500
    assert conversation_ids(http) == before


@pytest.mark.parametrize("conversation_id", ["abc%0A", "a%00b", "-x", "c" * 129, "%F0%9F%8C%8D"])
def test_an_id_no_conversation_can_have_is_not_found_everywhere(http: httpx.Client, conversation_id: str) -> None:
    route = f"/api/conversations/{conversation_id}"
    for method, path, body in [
        ("GET", route, None),
        ("PATCH", route, {"title": "renamed"}),
        ("DELETE", route, None),
        ("GET", f"{route}/export", None),
        ("GET", f"{route}/export?format=markdown", None),
    ]:
        reply = http.request(method, path, json=body)
        error = assert_openai_error(reply, 404, mentions="does not exist")
        assert (error["code"], error["param"]) == ("conversation_not_found", "conversation_id")


def test_an_id_with_a_trailing_newline_is_not_the_id_without_it(http: httpx.Client) -> None:
    started = http.post("/api/chat", json={"message": "hi", "conversation_id": "team:newline", "stream": False})
    assert started.status_code == 200, started.text
    assert http.get("/api/conversations/team:newline").status_code == 200
    assert_openai_error(http.get("/api/conversations/team:newline%0A"), 404, mentions="does not exist")
    exported = http.get("/api/conversations/team:newline/export")
    assert exported.status_code == 200
    # a colon, fine in an id, is no character for a file name
    assert exported.headers["content-disposition"] == 'attachment; filename="team_newline.json"'
    markdown = http.get("/api/conversations/team:newline/export", params={"format": "markdown"})
    assert markdown.headers["content-disposition"] == 'attachment; filename="team_newline.md"'


@pytest.mark.parametrize(
    ("query", "param", "mentions"),
    [
        ({"cursor": "junk"}, "cursor", "not one this server gave out"),
        ({"cursor": "x" * 600}, "query.cursor", "at most 512"),
        ({"limit": 0}, "query.limit", "greater than or equal to 1"),
        ({"limit": 201}, "query.limit", "less than or equal to 200"),
        ({"limit": 10**30}, "query.limit", "less than or equal to 200"),
        ({"limit": "many"}, "query.limit", "valid integer"),
    ],
)
def test_listing_with_a_bad_query(http: httpx.Client, query: dict[str, str | int], param: str, mentions: str) -> None:
    error = assert_openai_error(http.get("/api/conversations", params=query), 400, mentions=mentions)
    assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"title": 42}, "valid string"),
        ({"title": ""}, "at least 1 character"),
        ({"title": "t" * 201}, "at most 200"),
        ({"title": "t", "extra": 1}, "not permitted"),
        ({}, "required"),
    ],
)
def test_rename_with_a_bad_body(http: httpx.Client, body: dict[str, object], mentions: str) -> None:
    started = http.post("/api/chat", json={"message": "name me", "stream": False}).json()
    route = f"/api/conversations/{started['conversation_id']}"
    assert_openai_error(http.patch(route, json=body), 400, mentions=mentions)
    assert http.get(route).json()["title"] == "name me"


def test_export_in_an_unknown_format(http: httpx.Client) -> None:
    started = http.post("/api/chat", json={"message": "export me", "stream": False}).json()
    reply = http.get(f"/api/conversations/{started['conversation_id']}/export", params={"format": "pdf"})
    assert assert_openai_error(reply, 400, mentions="'json' or 'markdown'")["param"] == "query.format"


def conversation_ids(http: httpx.Client) -> set[str]:
    """Every stored conversation's id."""
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        page = http.get("/api/conversations", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
        ids.update(item["id"] for item in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


def _json() -> dict[str, str]:
    return {"content-type": "application/json"}
