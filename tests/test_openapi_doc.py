"""The OpenAPI document tells the truth: the statuses, bodies and rules it states are the server's.

`python -m tests.api_fuzz` holds every operation to the document with generated requests; these
tests pin the document's own promises and check a few answers against it directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest

from tests.support.server import running_parley

MODELS = [{"name": "echo", "provider": "fake"}, {"name": "quiet", "provider": "fake", "replies": ["ok"]}]
AGENTS = [{"name": "helper", "system_prompt": "Be brief.", "model": "echo"}]
ERROR_REF = "#/components/schemas/ErrorResponse"
METHODS = {"get", "post", "patch", "put", "delete"}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_parley(models=MODELS, agents=AGENTS) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def document(http: httpx.Client) -> dict[str, Any]:
    reply = http.get("/openapi.json")
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method in METHODS:
                yield path, method, operation


def schema_of(document: dict[str, Any], ref: str) -> jsonschema_rs.Validator:
    """A validator for one component, with the document's components there for its `$ref`s."""
    return jsonschema_rs.validator_for({"$ref": ref, "components": document["components"]})


def documented(document: dict[str, Any], method: str, path: str, reply: httpx.Response) -> None:
    """The reply's status is documented for the operation, and its JSON body matches the schema given."""
    responses = document["paths"][path][method]["responses"]
    assert str(reply.status_code) in responses, (method, path, reply.status_code, sorted(responses))
    schema = responses[str(reply.status_code)]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for({**schema, "components": document["components"]})
    errors = [error.message for error in validator.iter_errors(reply.json())]
    assert errors == [], (method, path, reply.text)


def test_no_status_is_documented_that_parley_never_sends(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    assert "HTTPValidationError" not in text
    for path, method, operation in operations(document):
        assert "422" not in operation["responses"], (method, path)


def test_every_error_has_the_openai_shape(document: dict[str, Any]) -> None:
    for path, method, operation in operations(document):
        takes_input = "requestBody" in operation or operation.get("parameters")
        if takes_input:
            assert "400" in operation["responses"], (method, path)
        if "requestBody" in operation:
            assert {"408", "413"} <= set(operation["responses"]), (method, path)
        assert {"403", "431"} <= set(operation["responses"]), (method, path)
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and (path, status) != ("/ready", "503"):
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path, status)
    for path in ("/api/chat", "/v1/chat/completions"):
        statuses = set(document["paths"][path]["post"]["responses"])
        assert {"400", "404", "413", "429", "502", "503", "504"} <= statuses, path


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    references = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                references.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert references
    for ref in references:
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


def test_streams_are_documented_event_by_event(document: dict[str, Any]) -> None:
    chat = document["paths"]["/api/chat"]["post"]["responses"]["200"]["content"]
    events = chat["text/event-stream"]["schema"]["oneOf"]
    names = {event["properties"]["event"]["const"] for event in events}
    assert names == {
        *("message_start", "text_delta", "reasoning_delta", "tool_call", "message_complete", "error"),
        *("tool_call_delta", "tool_result", "agent_handoff", "step"),  # an agent's steps
    }
    for event in events:
        assert event["properties"]["data"]["contentMediaType"] == "application/json"
    completions = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(completions) == {"application/json", "text/event-stream"}


def test_the_configured_models_and_agents_are_the_documented_ones(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    chat = schemas["ChatBody"]["properties"]
    assert {"type": "string", "enum": ["echo", "quiet"]} in chat["model"]["anyOf"]
    assert {"type": "string", "enum": ["helper", "default"]} in chat["agent"]["anyOf"]  # `default` always exists
    assert schemas["ChatCompletionBody"]["properties"]["model"]["enum"] == ["echo", "quiet"]


def test_errors_the_server_sends_are_the_documented_ones(http: httpx.Client, document: dict[str, Any]) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("post", "/api/chat", {"json": {"message": ""}}),
        ("post", "/api/chat", {"json": {"message": "hi", "model": "gpt-9"}}),
        ("post", "/api/chat", {"json": {"message": "hi", "agent": "nobody"}}),
        ("post", "/api/chat", {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("post", "/api/chat", {"json": {"message": "x" * 5_000_000}}),
        ("post", "/v1/chat/completions", {"json": {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}}),
        ("post", "/v1/chat/completions", {"json": {"model": "echo", "messages": []}}),
        ("get", "/api/conversations", {"params": {"limit": 0}}),
        ("get", "/api/conversations", {"params": {"cursor": "invented"}}),
        ("get", "/api/conversations/{conversation_id}", {}),
        ("patch", "/api/conversations/{conversation_id}", {"json": {"title": "new"}}),
        ("delete", "/api/conversations/{conversation_id}", {}),
        ("get", "/api/conversations/{conversation_id}/export", {}),
    ]
    cross_site = {"origin": "https://elsewhere.example", "sec-fetch-site": "cross-site"}
    cases += [("get", "/v1/models", {"headers": cross_site}), ("post", "/api/chat", {"headers": cross_site})]
    for method, path, request in cases:
        reply = http.request(method, path.format(conversation_id="conv-nobody-has"), **request)
        assert 400 <= reply.status_code < 500, (method, path, reply.status_code)
        documented(document, method, path, reply)


def test_replies_match_their_documented_schemas(http: httpx.Client, document: dict[str, Any]) -> None:
    chat = http.post("/api/chat", json={"message": "hello", "stream": False, "agent": "helper"})
    documented(document, "post", "/api/chat", chat)
    conversation_id = chat.json()["conversation_id"]
    body = {"model": "quiet", "messages": [{"role": "user", "content": "hi"}]}
    documented(document, "post", "/v1/chat/completions", http.post("/v1/chat/completions", json=body))
    for path in ("/health", "/ready", "/v1/models", "/api/conversations"):
        documented(document, "get", path, http.get(path))
    documented(
        document, "get", "/api/conversations/{conversation_id}", http.get(f"/api/conversations/{conversation_id}")
    )


@pytest.mark.parametrize(
    ("message", "valid"),
    [
        ({"role": "user", "content": "hi"}, True),
        ({"role": "user"}, False),
        ({"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}, True),
        ({"role": "assistant", "content": None}, False),
        ({"role": "tool", "content": "42", "tool_call_id": "c1"}, True),
        ({"role": "tool", "content": "42", "tool_call_id": ""}, False),
        ({"role": "tool", "content": "42"}, False),
    ],
)
def test_what_a_message_needs_is_in_the_document(
    http: httpx.Client, document: dict[str, Any], message: dict[str, Any], valid: bool
) -> None:
    """The document and the server agree on which messages are acceptable."""
    body = {"model": "echo", "messages": [message]}
    assert schema_of(document, "#/components/schemas/ChatCompletionBody").is_valid(body) is valid
    reply = http.post("/v1/chat/completions", json=body)
    assert (reply.status_code == 200) is valid, reply.text


def test_tools_are_documented_only_for_models_that_call_them(http: httpx.Client, document: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    assert not schema_of(document, "#/components/schemas/ChatCompletionBody").is_valid(body)
    assert http.post("/v1/chat/completions", json=body).status_code == 400


def test_too_many_stop_sequences_are_outside_the_document(http: httpx.Client, document: dict[str, Any]) -> None:
    for stop, valid in ((["a", "b", "c", "d"], True), (["a", "b", "c", "d", "e"], False)):
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stop": stop}
        assert schema_of(document, "#/components/schemas/ChatCompletionBody").is_valid(body) is valid
        assert (http.post("/v1/chat/completions", json=body).status_code == 200) is valid


@pytest.mark.parametrize(
    ("title", "valid"), [("Trip", True), ("  a  ", True), ("\n", False), ("\u2003\x1c\x85", False)]
)
def test_a_title_needs_more_than_spaces(http: httpx.Client, document: dict[str, Any], title: str, valid: bool) -> None:
    """The store trims titles as Python's `str.split` does; the documented pattern agrees with it."""
    conversation_id = http.post("/api/chat", json={"message": "hi", "stream": False}).json()["conversation_id"]
    assert schema_of(document, "#/components/schemas/Rename").is_valid({"title": title}) is valid
    reply = http.patch(f"/api/conversations/{conversation_id}", json={"title": title})
    assert (reply.status_code == 200) is valid, reply.text
