"""Streams that survive on one server without Redis (the run logs in memory): a reply outlives its
client and is resumed with Last-Event-ID or `after`; cancel and Idempotency-Key work the same as
across instances; bad resume input gets a 4xx in the OpenAI error shape; the WebSocket numbers its
frames and resumes; the routes are documented."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from websockets.sync.client import connect

from tests.support.server import running_parley

SLOW_REPLY = " ".join(f"piece{i}" for i in range(60))
MODELS = [
    {"name": "echo", "provider": "fake"},
    {"name": "slow", "provider": "fake", "replies": [SLOW_REPLY], "chunk_chars": 4, "delay_ms": 20},
]
WAIT = 30.0


@pytest.fixture(scope="module")
def parley(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("runs-local")
    with running_parley(models=MODELS, data_dir=folder, run_log_seconds=2) as url:
        yield url


def events_until(source: Iterator[ServerSentEvent], stop: int | None = None) -> list[ServerSentEvent]:
    seen: list[ServerSentEvent] = []
    for event in source:
        seen.append(event)
        if event.event in ("message_complete", "error"):
            break
        if stop is not None and sum(e.event == "text_delta" for e in seen) >= stop:
            break
    return seen


def text_of(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "text_delta")


def post_chat(
    url: str, stop: int | None = None, headers: dict[str, str] | None = None, **body: Any
) -> list[ServerSentEvent]:
    payload = {"message": "hello", "model": "slow", "conversation_id": f"local-{uuid.uuid4().hex[:12]}", **body}
    with (
        httpx.Client(timeout=WAIT) as http,
        connect_sse(http, "POST", f"{url}/api/chat", json=payload, headers=dict(headers or {})) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return events_until(source.iter_sse(), stop)


def resume(url: str, run_id: str, headers: dict[str, str] | None = None, query: str = "") -> list[ServerSentEvent]:
    with (
        httpx.Client(timeout=WAIT) as http,
        connect_sse(http, "GET", f"{url}/api/runs/{run_id}/events{query}", headers=dict(headers or {})) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return events_until(source.iter_sse())


def stored(url: str, conversation_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        reply: dict[str, Any] = httpx.get(f"{url}/api/conversations/{conversation_id}").json()["messages"][-1]
        if reply["status"] == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def test_a_reply_outlives_its_client_and_resumes_with_last_event_id(parley: str) -> None:
    first = post_chat(parley, stop=3)
    start = json.loads(first[0].data)
    rest = resume(parley, start["run_id"], {"Last-Event-ID": first[-1].id})
    ids = [int(e.id) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert text_of(first) + text_of(rest) == SLOW_REPLY
    assert stored(parley, start["conversation_id"], "complete")["content"] == SLOW_REPLY
    # Last-Event-ID wins over `after` (an EventSource reconnects on the URL it first opened)
    again = resume(parley, start["run_id"], {"Last-Event-ID": first[-1].id}, query="?after=0")
    assert text_of(again) == text_of(rest)


def test_on_disconnect_cancel_stops_the_reply_when_its_client_leaves(parley: str) -> None:
    first = post_chat(parley, stop=3, on_disconnect="cancel")
    start = json.loads(first[0].data)
    assert stored(parley, start["conversation_id"], "cancelled")["status"] == "cancelled"


def test_cancel_and_idempotency_without_redis(parley: str) -> None:
    key = uuid.uuid4().hex
    conversation = f"local-{uuid.uuid4().hex[:12]}"
    first = post_chat(parley, stop=2, headers={"Idempotency-Key": key}, conversation_id=conversation)
    run_id = json.loads(first[0].data)["run_id"]
    retried = post_chat(parley, stop=1, headers={"Idempotency-Key": key}, conversation_id=conversation)
    assert json.loads(retried[0].data)["run_id"] == run_id
    cancelled = httpx.post(f"{parley}/api/runs/{run_id}/cancel", timeout=WAIT)
    assert cancelled.status_code == 200
    assert cancelled.json() == {
        "run_id": run_id,
        "state": "cancelled",
        "conversation_id": conversation,
        "message_id": json.loads(first[0].data)["message_id"],
    }
    rest = resume(parley, run_id, {"Last-Event-ID": first[-1].id})
    assert json.loads(rest[-1].data)["finish_reason"] == "cancelled"
    reply = stored(parley, conversation, "cancelled")
    assert reply["content"] == text_of(first) + text_of(rest)
    messages = httpx.get(f"{parley}/api/conversations/{conversation}").json()["messages"]
    assert len(messages) == 2  # one user message and one reply, though the POST came twice


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/api/runs/run_0123456789abcdef/events", {}, 404, "run_not_found"),
        ("GET", "/api/runs/not-a-run/events", {}, 404, "run_not_found"),
        ("POST", "/api/runs/run_0123456789abcdef/cancel", {}, 404, "run_not_found"),
        ("GET", "/api/runs/run_0123456789abcdef/events?after=-1", {}, 400, None),
        ("GET", "/api/runs/run_0123456789abcdef/events?after=x", {}, 400, None),
    ],
)
def test_bad_resume_input_gets_a_clear_error(
    parley: str, method: str, path: str, headers: dict[str, str], status: int, code: str | None
) -> None:
    reply = httpx.request(method, parley + path, headers=headers, timeout=WAIT)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code


def test_a_last_event_id_that_is_not_an_event_id_is_refused(parley: str) -> None:
    run_id = json.loads(post_chat(parley, model="echo", message="hi")[0].data)["run_id"]
    reply = httpx.get(f"{parley}/api/runs/{run_id}/events", headers={"Last-Event-ID": "abc"}, timeout=WAIT)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "Last-Event-ID"


def test_an_idempotency_key_needs_a_surviving_stream(parley: str) -> None:
    body = {"message": "hi", "model": "echo", "stream": False}
    reply = httpx.post(f"{parley}/api/chat", json=body, headers={"Idempotency-Key": "k1"}, timeout=WAIT)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "Idempotency-Key"


def test_a_finished_runs_events_expire_and_then_answer_410(parley: str) -> None:
    events = post_chat(parley, model="echo", message="short")
    start = json.loads(events[0].data)
    assert text_of(resume(parley, start["run_id"])) == "short"
    time.sleep(2.5)  # run_log_seconds = 2
    gone = httpx.get(f"{parley}/api/runs/{start['run_id']}/events", timeout=WAIT)
    assert gone.status_code == 410
    assert gone.headers["Location"] == f"/api/conversations/{start['conversation_id']}"


def test_a_websocket_reply_outlives_its_socket_and_resumes_with_seq(parley: str) -> None:
    session = f"local-ws-{uuid.uuid4().hex[:12]}"
    url = parley.replace("http://", "ws://") + f"/ws/chat/{session}"
    with connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"message": "hello", "model": "slow"}))
        first = [json.loads(ws.recv(timeout=WAIT)) for _ in range(3)]
    with connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "resume", "run_id": "run_0123456789abcdef"}))
        assert json.loads(ws.recv(timeout=WAIT))["data"]["code"] == "run_not_found"
        ws.send(json.dumps({"type": "resume", "run_id": first[0]["data"]["run_id"], "after": first[-1]["seq"]}))
        rest = [json.loads(ws.recv(timeout=WAIT))]
        while rest[-1]["event"] not in ("message_complete", "error"):
            rest.append(json.loads(ws.recv(timeout=WAIT)))
    frames = first + rest
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    text = "".join(f["data"]["text"] for f in frames if f["event"] == "text_delta")
    assert text == SLOW_REPLY == stored(parley, session, "complete")["content"]


def test_the_run_routes_are_documented_with_their_errors(parley: str) -> None:
    paths = httpx.get(f"{parley}/openapi.json").json()["paths"]
    events = paths["/api/runs/{run_id}/events"]["get"]["responses"]
    assert {"200", "400", "404", "409", "410"} <= set(events)
    assert "text/event-stream" in events["200"]["content"]
    assert {"200", "404", "409"} <= set(paths["/api/runs/{run_id}/cancel"]["post"]["responses"])
    assert "409" in paths["/api/chat"]["post"]["responses"]
    detail = httpx.get(f"{parley}/openapi.json").json()["components"]["schemas"]["ConversationDetail"]
    assert "active_run" in detail["properties"]


def test_a_cancel_frame_stops_a_run_the_socket_resumed(parley: str) -> None:
    first = post_chat(parley, stop=2)
    start = json.loads(first[0].data)
    url = parley.replace("http://", "ws://") + f"/ws/chat/{start['conversation_id']}"
    with connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "resume", "run_id": start["run_id"], "after": int(first[-1].id)}))
        assert json.loads(ws.recv(timeout=WAIT))["event"] == "text_delta"
        ws.send(json.dumps({"type": "cancel"}))
        frames = [json.loads(ws.recv(timeout=WAIT))]
        while frames[-1]["event"] not in ("message_complete", "error"):
            frames.append(json.loads(ws.recv(timeout=WAIT)))
    assert frames[-1]["data"]["finish_reason"] == "cancelled"
    assert stored(parley, start["conversation_id"], "cancelled")["status"] == "cancelled"
