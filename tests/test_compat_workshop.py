"""The workshop chatbot's page against Parley: `WS /ws/chat/{session_id}` with its frames, the
`default` agent, and the session's history kept, driven by a real `websockets` client sending
exactly what the page sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.server import running_parley
from tests.support.upstream import Upstream, new_marker

WAIT = 15.0


@pytest.fixture(scope="module")
def workshop(upstream: Upstream) -> Iterator[str]:
    models = [{"name": "echo", "provider": "fake", "chunk_chars": 2}, *upstream.parley_models()]
    with running_parley(models=models, websocket_frames="workshop") as url:
        yield url


def page_socket(base_url: str, session_id: str) -> ClientConnection:
    return connect(base_url.replace("http://", "ws://") + f"/ws/chat/{session_id}", open_timeout=WAIT)


def send(ws: ClientConnection, message: str, agent: str = "default") -> list[dict[str, Any]]:
    """As the page does: `{message, agent}`, then frames until the reply is complete (or failed)."""
    ws.send(json.dumps({"message": message, "agent": agent}))
    frames = [json.loads(ws.recv(timeout=WAIT))]
    while frames[-1].get("type") == "chunk":
        frames.append(json.loads(ws.recv(timeout=WAIT)))
    return frames


def test_the_page_gets_chunks_then_complete(workshop: str) -> None:
    with page_socket(workshop, "session_1733050000000") as ws:
        frames = send(ws, "hello workshop")
    *chunks, last = frames
    assert len(chunks) > 1, "the reply arrives as it is written"
    assert all(frame == {"type": "chunk", "content": frame["content"], "agent": "default"} for frame in chunks)
    assert "".join(frame["content"] for frame in chunks) == "hello workshop"
    assert last == {"type": "complete", "agent": "default"}


def test_the_session_history_is_kept_and_reaches_the_model(workshop: str, upstream: Upstream) -> None:
    marker = new_marker()
    with page_socket(workshop, "session_history_1") as ws:
        send(ws, "my name is Ada", agent="default")
    with httpx.Client(base_url=workshop) as http:  # the default agent runs the default model: echo
        stored = http.get("/api/conversations/session_history_1").json()
    assert [m["content"] for m in stored["messages"]] == ["my name is Ada", "my name is Ada"]
    assert stored["agent"] == "default"

    with running_parley(models=upstream.parley_models(), websocket_frames="workshop") as url:
        with page_socket(url, "session_history_2") as ws:
            send(ws, "first message")
        with page_socket(url, "session_history_2") as ws:  # a reconnect (a page reload) keeps the session
            frames = send(ws, f"second {marker}")
    assert frames[-1] == {"type": "complete", "agent": "default"}
    sent = upstream.find(marker).body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "first message"
    assert all(m["role"] != "system" for m in sent), "the default agent adds no prompt"


def test_an_unknown_agent_is_an_error_frame_the_page_shows(workshop: str) -> None:
    with page_socket(workshop, "session_errors") as ws:
        [frame] = send(ws, "hi", agent="greeting_agent")
        assert set(frame) == {"error"}
        assert "greeting_agent" in frame["error"]
        assert send(ws, "still open")[-1]["type"] == "complete", "the socket stays usable"


def test_parley_frames_stay_the_default(upstream: Upstream) -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url, page_socket(url, "s-parley") as ws:
        ws.send(json.dumps({"message": "hi", "agent": "default"}))
        first = json.loads(ws.recv(timeout=WAIT))
    assert first["event"] == "message_start"
    assert first["data"]["agent"] == "default"
