"""An upstream's internals stay inside Parley: its words, hosts and ports, the client library's
exception names. Clients get Parley's own classified error, on every route and in the stored
reply; the server log gets the full detail under the request id."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley
from tests.support.upstream import LEAKY_TEXTS, Upstream, new_marker
from tests.support.ws import read_reply, socket

UPSTREAM_LOG = "parley.models.openai"
# What a client library's exception or a traceback looks like in text.
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback|aiohttp")

# model: (status, code, words of Parley's message, words of the upstream's own the log must have)
FAILURES: dict[str, tuple[int, str, str, str]] = {
    "status-401-leaky": (502, "upstream_auth_failed", "refused the API key", "sk-li****9876"),
    "status-403": (502, "upstream_auth_failed", "refused access", "proj_internal42"),
    "status-404": (502, "upstream_not_found", "no such model", "gpt-internal-7"),
    "status-400-leaky": (400, "upstream_rejected", "refused the request as invalid", "internal-host=10.1.2.3"),
    "status-500-leaky": (502, "upstream_error", "the upstream failed", "/srv/internal/app.py"),
    "unreachable": (502, "upstream_error", "could not be reached", "Cannot connect to host 127.0.0.1"),
}


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    with running_parley(models=upstream.parley_models(), stream_head_wait_seconds=5.0) as url:
        yield url


@pytest.fixture
def upstream_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="parley")
    return caplog


def internal_words(upstream: Upstream) -> list[str]:
    """Text of the upstreams' that no client may see."""
    ports = [re.search(r":(\d+)/", model["base_url"]) for model in upstream.parley_models()]
    return [*LEAKY_TEXTS, "127.0.0.1", "localhost", *{f":{port[1]}" for port in ports if port}]


def assert_nothing_leaks(text: str, upstream: Upstream) -> None:
    for word in internal_words(upstream):
        assert word not in text, f"{word!r} reached the client: {text}"
    assert not EXCEPTION_NAME.search(text), f"an exception name reached the client: {text}"


def assert_parley_error(error: dict[str, Any], model: str, upstream: Upstream) -> None:
    _, code, words, _ = FAILURES[model]
    assert error["code"] == code
    assert words in error["message"]
    assert_nothing_leaks(json.dumps(error), upstream)


def assert_logged(caplog: pytest.LogCaptureFixture, request_id: str, model: str, words: str) -> None:
    """The log has the upstream's detail in one line, under the request id."""
    lines = [r.getMessage() for r in caplog.records if r.name == UPSTREAM_LOG and request_id in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{request_id} upstream {model!r} ")
    assert words in lines[0]
    assert "\n" not in lines[0]


def new_request_id() -> str:
    return f"leak-{uuid.uuid4().hex}"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("model", FAILURES)
def test_v1_error_is_parleys_own_and_the_log_has_the_upstreams(
    parley: str, upstream: Upstream, upstream_log: pytest.LogCaptureFixture, model: str, stream: bool
) -> None:
    request_id = new_request_id()
    body = {"model": model, "messages": [{"role": "user", "content": new_marker()}], "stream": stream}
    reply = httpx.post(parley + "/v1/chat/completions", json=body, headers={"x-request-id": request_id}, timeout=30)
    status, _, _, logged = FAILURES[model]
    assert reply.status_code == status, reply.text
    assert reply.headers["x-request-id"] == request_id
    assert_nothing_leaks(reply.text, upstream)
    assert_parley_error(reply.json()["error"], model, upstream)
    assert_logged(upstream_log, request_id, model, logged)


def test_v1_mid_stream_error_is_parleys_own(
    parley: str, upstream: Upstream, upstream_log: pytest.LogCaptureFixture
) -> None:
    request_id = new_request_id()
    body = {"model": "error-mid-leaky", "messages": [{"role": "user", "content": new_marker()}], "stream": True}
    with httpx.stream(
        "POST", parley + "/v1/chat/completions", json=body, headers={"x-request-id": request_id}, timeout=30
    ) as reply:
        assert reply.status_code == 200
        text = reply.read().decode()
    assert "Partial" in text
    last = json.loads([line for line in text.splitlines() if line.startswith("data: ")][-1].removeprefix("data: "))
    assert last["error"]["message"] == "the upstream failed during the reply"
    assert_nothing_leaks(text, upstream)
    assert_logged(upstream_log, request_id, "error-mid-leaky", "worker internal-host=10.1.2.3 ran out of memory")


def stored_reply(parley: str, conversation_id: str) -> dict[str, Any]:
    conversation = httpx.get(f"{parley}/api/conversations/{conversation_id}", timeout=30)
    assert conversation.status_code == 200
    replies = [m for m in conversation.json()["messages"] if m["role"] == "assistant"]
    assert len(replies) == 1
    return dict(replies[0])


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("model", ["status-401-leaky", "status-500-leaky", "unreachable"])
def test_chat_api_error_and_stored_reply_are_parleys_own(
    parley: str, upstream: Upstream, upstream_log: pytest.LogCaptureFixture, model: str, stream: bool
) -> None:
    request_id, conversation_id = new_request_id(), f"conv-leak-{uuid.uuid4().hex}"
    body = {"message": new_marker(), "model": model, "stream": stream, "conversation_id": conversation_id}
    reply = httpx.post(parley + "/api/chat", json=body, headers={"x-request-id": request_id}, timeout=30)
    assert reply.status_code == FAILURES[model][0]
    assert_nothing_leaks(reply.text, upstream)
    assert_parley_error(reply.json()["error"], model, upstream)
    stored = stored_reply(parley, conversation_id)
    assert stored["status"] == "failed"
    assert stored["error"] == reply.json()["error"]["message"]
    assert_logged(upstream_log, request_id, model, FAILURES[model][3])


def test_chat_api_mid_stream_error_event_and_stored_reply_are_parleys_own(
    parley: str, upstream: Upstream, upstream_log: pytest.LogCaptureFixture
) -> None:
    request_id, conversation_id = new_request_id(), f"conv-leak-{uuid.uuid4().hex}"
    body = {"message": new_marker(), "model": "error-mid-leaky", "conversation_id": conversation_id}
    with (
        httpx.Client(timeout=30, headers={"x-request-id": request_id}) as http,
        connect_sse(http, "POST", parley + "/api/chat", json=body) as source,
    ):
        assert source.response.status_code == 200
        events = [(event.event, event.data) for event in source.iter_sse()]
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1])["message"] == "the upstream failed during the reply"
    assert_nothing_leaks(json.dumps(events), upstream)
    stored = stored_reply(parley, conversation_id)
    assert (stored["status"], stored["content"]) == ("failed", "Partial")
    assert stored["error"] == "the upstream failed during the reply"
    assert_logged(upstream_log, request_id, "error-mid-leaky", "ran out of memory")


def test_websocket_error_frame_is_parleys_own_and_logged_under_the_sockets_id(
    parley: str, upstream: Upstream, upstream_log: pytest.LogCaptureFixture
) -> None:
    with socket(parley, f"ws-{uuid.uuid4().hex}") as ws:
        assert ws.response is not None
        request_id = ws.response.headers["x-request-id"]
        ws.send(json.dumps({"message": new_marker(), "model": "status-401-leaky"}))
        frames = read_reply(ws)
    assert frames[-1]["event"] == "error"
    assert_parley_error(frames[-1]["data"], "status-401-leaky", upstream)
    assert_nothing_leaks(json.dumps(frames), upstream)
    assert_logged(upstream_log, request_id, "status-401-leaky", "sk-li****9876")


def test_a_context_refusal_keeps_its_code_in_parleys_words(parley: str, upstream: Upstream) -> None:
    # llama-server says it its own way (a number for a code, its own type): still context_length_exceeded.
    body = {"model": "status-400-context", "messages": [{"role": "user", "content": new_marker()}]}
    reply = httpx.post(parley + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert error["message"] == "the conversation is too long for model 'status-400-context'"
    assert "available context size" not in reply.text


def test_only_plain_names_of_an_upstream_refusal_reach_the_client(parley: str, upstream: Upstream) -> None:
    plain = httpx.post(
        parley + "/v1/chat/completions",
        json={"model": "status-400", "messages": [{"role": "user", "content": new_marker()}]},
        timeout=30,
    ).json()["error"]
    assert (plain["param"], plain["code"]) == ("messages", "context_length_exceeded")
    assert "4096" not in plain["message"]
    odd = httpx.post(
        parley + "/v1/chat/completions",
        json={"model": "status-400-leaky", "messages": [{"role": "user", "content": new_marker()}]},
        timeout=30,
    ).json()["error"]
    assert (odd["param"], odd["code"]) == (None, "upstream_rejected")
