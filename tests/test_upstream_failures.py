"""The `openai` provider when the upstream fails, stalls, or the client leaves.

- A failure before the first event is a real HTTP error in the OpenAI error shape.
- A failure after the stream started ends it with an error event: never a cut, never a 500.
- A silent upstream gets keep-alive comments sent to the client until its read timeout.
- A client that goes away cancels the run: Parley closes its connection to the upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from openai import OpenAI, Stream
from openai.types.chat import ChatCompletionChunk

from tests.support.server import running_parley
from tests.support.upstream import ERROR_REPLIES, TEXT_REPLY, Upstream, new_marker

PING_SECONDS = 0.2
# Long enough for every early failure here (the slowest: a 0.5 s timeout), short enough to wait out.
HEAD_WAIT = 2.0


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    with running_parley(
        models=upstream.parley_models(), sse_ping_seconds=PING_SECONDS, stream_head_wait_seconds=HEAD_WAIT
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(parley: str) -> OpenAI:
    return OpenAI(base_url=parley + "/v1", api_key="x", max_retries=0, timeout=30)


def completion_body(model: str, ask: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": ask}], "stream": stream}


def request_body(path: str, model: str, ask: str, stream: bool) -> dict[str, Any]:
    """The body asking `ask` of `model` on `/v1/chat/completions` or `/api/chat`."""
    if path.startswith("/v1"):
        return completion_body(model, ask, stream)
    return {"message": ask, "model": model, "stream": stream}


def assert_openai_error(reply: httpx.Response, status: int, error_type: str, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (error_type, code)
    assert isinstance(error["message"], str)
    return dict(error)


# -- failures before the first event: a real HTTP status --

EARLY_FAILURES = [
    # model, Parley's status, error type, code, openai exception, words the message must carry
    ("status-400", 400, "invalid_request_error", "context_length_exceeded", openai.BadRequestError, "too long"),
    # The upstream's key is Parley's configuration, not the client's: a gateway failure.
    ("status-401", 502, "upstream_error", "upstream_auth_failed", openai.InternalServerError, "API key"),
    ("status-429", 429, "rate_limit_error", "rate_limited", openai.RateLimitError, "rate limiting"),
    ("status-500", 502, "upstream_error", "upstream_error", openai.InternalServerError, "failed"),
    ("unreachable", 502, "upstream_error", "upstream_error", openai.InternalServerError, "could not be reached"),
    ("silent-timeout", 504, "upstream_error", "upstream_timeout", openai.InternalServerError, "0.5 s"),
    ("unaccepting", 504, "upstream_error", "upstream_timeout", openai.InternalServerError, "connection"),
    # error bodies of other shapes are read all the same (their words go to the log: tests/test_leaks.py)
    ("status-400-flat", 400, "invalid_request_error", "upstream_rejected", openai.BadRequestError, "invalid"),
    ("status-503-detail", 502, "upstream_error", "upstream_error", openai.InternalServerError, "failed"),
    ("status-502-html", 502, "upstream_error", "upstream_error", openai.InternalServerError, "failed"),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(("model", "status", "error_type", "code", "exc", "words"), EARLY_FAILURES)
def test_failure_before_first_event_is_an_http_error(
    parley: str,
    client: OpenAI,
    stream: bool,
    model: str,
    status: int,
    error_type: str,
    code: str,
    exc: type[openai.APIStatusError],
    words: str,
) -> None:
    reply = httpx.post(parley + "/v1/chat/completions", json=completion_body(model, new_marker(), stream), timeout=30)
    error = assert_openai_error(reply, status, error_type, code)
    assert words in error["message"]
    with pytest.raises(exc) as raised:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": new_marker()}], stream=stream)
    assert raised.value.status_code == status
    assert words in raised.value.message


def test_upstream_rejection_names_the_offending_param(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="status-400", messages=[{"role": "user", "content": new_marker()}])
    assert raised.value.code == ERROR_REPLIES["status-400"][1]["error"]["code"]
    assert raised.value.param == "messages"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_chat_api_failure_before_first_event_is_an_http_error(parley: str, stream: bool) -> None:
    reply = httpx.post(
        parley + "/api/chat", json={"message": new_marker(), "model": "status-500", "stream": stream}, timeout=30
    )
    assert_openai_error(reply, 502, "upstream_error", "upstream_error")


# -- failures after the stream started: a final error event --

LATE_FAILURES = [
    # model, the text sent before the failure, words the error message must carry, its code
    ("error-mid", "Partial", "failed during the reply", "upstream_error"),
    ("drop", "Partial", "closed the connection before the reply was finished", "upstream_error"),
    ("cut", "Partial", "ended before the reply was finished", "upstream_error"),
    ("malformed", "Partial", "could not read", "upstream_error"),
    ("wrong-shape", "Partial", "could not read", "upstream_error"),
    ("stall-timeout", "Thinking", "nothing for 0.5 s", "upstream_timeout"),
]


def read_text(stream: Stream[ChatCompletionChunk], into: list[str]) -> None:
    for chunk in stream:
        into.extend(c.delta.content or "" for c in chunk.choices)


@pytest.mark.parametrize(("model", "before", "words", "code"), LATE_FAILURES)
def test_failure_mid_stream_raises_in_the_openai_client(
    client: OpenAI, model: str, before: str, words: str, code: str
) -> None:
    received: list[str] = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": new_marker()}], stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        read_text(stream, received)
    assert "".join(received) == before
    assert words in raised.value.message
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == code


@pytest.mark.parametrize(("model", "before", "words", "code"), LATE_FAILURES)
def test_failure_mid_stream_ends_v1_stream_with_error_chunk(
    parley: str, model: str, before: str, words: str, code: str
) -> None:
    body = completion_body(model, new_marker(), stream=True)
    with httpx.stream("POST", parley + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        data = [line.removeprefix("data: ") for line in reply.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    assert set(last) == {"error"}
    assert words in last["error"]["message"]
    assert last["error"]["code"] == code
    texts = [c["choices"][0]["delta"].get("content") for c in map(json.loads, data[:-1]) if c.get("choices")]
    assert "".join(t for t in texts if t) == before


@pytest.mark.parametrize(("model", "before", "words", "code"), LATE_FAILURES)
def test_failure_mid_stream_ends_chat_api_stream_with_error_event(
    parley: str, model: str, before: str, words: str, code: str
) -> None:
    with (
        httpx.Client(timeout=30) as http,
        connect_sse(http, "POST", parley + "/api/chat", json={"message": new_marker(), "model": model}) as source,
    ):
        assert source.response.status_code == 200
        events = [(event.event, json.loads(event.data)) for event in source.iter_sse() if event.data]
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_complete" not in names
    assert "".join(data["text"] for name, data in events if name == "text_delta") == before
    error = events[-1][1]
    assert words in error["message"]
    assert error["code"] == code


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [("error-mid", 502, "upstream_error"), ("drop", 502, "upstream_error"), ("stall-timeout", 504, "upstream_timeout")],
)
def test_failure_during_a_json_reply_is_an_http_error(parley: str, model: str, status: int, code: str) -> None:
    reply = httpx.post(parley + "/v1/chat/completions", json=completion_body(model, new_marker(), False), timeout=30)
    assert_openai_error(reply, status, "upstream_error", code)
    reply = httpx.post(
        parley + "/api/chat", json={"message": new_marker(), "model": model, "stream": False}, timeout=30
    )
    assert_openai_error(reply, status, "upstream_error", code)


# -- a silent upstream: keep-alive comments --


def test_keepalive_comments_flow_while_the_upstream_is_silent(parley: str) -> None:
    body = completion_body("stall", new_marker(), stream=True)
    with httpx.stream("POST", parley + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line]
    contents = [i for i, line in enumerate(lines) if '"content"' in line and "Thinking" in line]
    resumed = [i for i, line in enumerate(lines) if '" done"' in line]
    assert contents
    assert resumed
    pings = [line for line in lines[contents[0] : resumed[0]] if line.startswith(": ping")]
    assert pings, "no keep-alive comment while the upstream was silent"
    assert lines[-1] == "data: [DONE]"


def test_keepalive_comments_flow_on_chat_api_while_the_upstream_is_silent(parley: str) -> None:
    body = {"message": new_marker(), "model": "stall"}  # (a reply that goes on if its client leaves: a run log)
    with httpx.stream("POST", parley + "/api/chat", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        lines = [line for line in reply.iter_lines() if line]
    deltas = [i for i, line in enumerate(lines) if line.startswith("data: ") and '"text"' in line]
    assert len(deltas) >= 2
    pings = [line for line in lines[deltas[0] : deltas[-1]] if line.startswith(": ping")]
    assert pings, "no keep-alive comment while the upstream was silent"
    assert lines[-2] == "event: message_complete"


def test_chat_api_stream_survives_a_stall_shorter_than_the_read_timeout(parley: str) -> None:
    with (
        httpx.Client(timeout=30) as http,
        connect_sse(http, "POST", parley + "/api/chat", json={"message": new_marker(), "model": "stall"}) as source,
    ):
        events = [(event.event, json.loads(event.data)) for event in source.iter_sse() if event.data]
    assert "".join(data["text"] for name, data in events if name == "text_delta") == "Thinking done"
    assert events[-1][0] == "message_complete"


# -- disconnect means cancel --


def assert_upstream_cancelled(upstream: Upstream, ask: str) -> None:
    seen = upstream.find(ask)
    assert seen.wait_ended(15), "the upstream is still answering a request whose client left"
    assert seen.client_closed, "the upstream finished its answer instead of seeing the connection close"
    assert not seen.completed


def assert_still_serves(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="text", messages=[{"role": "user", "content": new_marker()}])
    assert reply.choices[0].message.content == TEXT_REPLY


def test_closing_an_openai_stream_cancels_the_upstream(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    stream = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": ask}], stream=True)
    pieces = 0
    for chunk in stream:
        pieces += sum(1 for c in chunk.choices if c.delta.content)
        if pieces == 3:
            break
    stream.close()
    assert_upstream_cancelled(upstream, ask)
    assert upstream.find(ask).chunks_sent < upstream.slow_pieces
    assert_still_serves(client)


@pytest.mark.parametrize("model", ["slow", "hang"])
def test_closing_a_chat_api_stream_cancels_the_upstream(
    parley: str, client: OpenAI, upstream: Upstream, model: str
) -> None:
    ask = new_marker()
    with (
        httpx.Client(timeout=30) as http,
        connect_sse(
            http, "POST", parley + "/api/chat", json={"message": ask, "model": model, "on_disconnect": "cancel"}
        ) as source,
    ):
        for event in source.iter_sse():
            if event.event == "text_delta":
                break  # leaving the block closes the response mid-stream
    assert_upstream_cancelled(upstream, ask)
    assert_still_serves(client)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize("model", ["slow", "silent"])
def test_a_client_leaving_a_json_request_cancels_the_upstream(
    parley: str, client: OpenAI, upstream: Upstream, path: str, model: str
) -> None:
    ask = new_marker()
    body = request_body(path, model, ask, stream=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(parley + path, json=body, timeout=httpx.Timeout(30, read=1.0))
    assert_upstream_cancelled(upstream, ask)
    assert_still_serves(client)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_client_leaving_before_the_first_event_cancels_the_upstream(
    parley: str, client: OpenAI, upstream: Upstream, path: str
) -> None:
    # The client gives up while Parley still holds the status line back for the first event.
    ask = new_marker()
    body = request_body(path, "silent-long", ask, stream=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(parley + path, json=body, timeout=httpx.Timeout(30, read=HEAD_WAIT / 4))
    assert_upstream_cancelled(upstream, ask)
    assert_still_serves(client)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_rate_limit_passes_its_retry_after_on(parley: str, stream: bool) -> None:
    reply = httpx.post(parley + "/v1/chat/completions", json=completion_body("status-429", new_marker(), stream))
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "7", "clients learn when to come back"
    assert reply.json()["error"]["code"] == "rate_limited"
    other = httpx.post(parley + "/v1/chat/completions", json=completion_body("status-500", new_marker(), stream))
    assert "retry-after" not in other.headers
