"""A real WebSocket client's side of `WS /ws/chat/{session_id}`, for the tests of it."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.upstream import Upstream

Frame = dict[str, Any]
WAIT = 15.0  # seconds a test waits for a frame or a saved reply before failing


def parley_models(upstream: Upstream) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "provider": "fake", "chunk_chars": 3},
        # echoes the message two characters every 10 ms: a reply that is still running when the test acts
        {"name": "slow-echo", "provider": "fake", "chunk_chars": 2, "delay_ms": 10},
        {"name": "thinker", "provider": "fake", "replies": ["The answer is 4."], "reasoning": "2 plus 2 is 4"},
        *(m for m in upstream.parley_models() if m["name"] in ("text", "slow")),
    ]


AGENTS = [{"name": "pirate", "system_prompt": "Talk like a pirate.", "model": "text"}]


def new_session() -> str:
    return f"ws-{uuid.uuid4().hex}"


def socket(base_url: str, session_id: str) -> ClientConnection:
    return connect(base_url.replace("http://", "ws://") + f"/ws/chat/{session_id}", open_timeout=WAIT)


def receive(ws: ClientConnection) -> Frame:
    frame = json.loads(ws.recv(timeout=WAIT))
    assert isinstance(frame, dict), frame
    return frame


def read_reply(ws: ClientConnection) -> list[Frame]:
    """Frames up to and including the reply's last: `message_complete`, or `error`."""
    frames = [receive(ws)]
    while frames[-1]["event"] not in ("message_complete", "error"):
        frames.append(receive(ws))
    return frames


def chat(ws: ClientConnection, message: str, **fields: Any) -> list[Frame]:
    ws.send(json.dumps({"message": message, **fields}))
    return read_reply(ws)


def text_of(frames: list[Frame], event: str = "text_delta") -> str:
    return "".join(frame["data"]["text"] for frame in frames if frame["event"] == event)


def until_event(ws: ClientConnection, event: str) -> list[Frame]:
    frames = [receive(ws)]
    while frames[-1]["event"] != event:
        assert frames[-1]["event"] not in ("message_complete", "error"), frames
        frames.append(receive(ws))
    return frames


def conversation(base_url: str, session_id: str) -> Frame:
    reply = httpx.get(f"{base_url}/api/conversations/{session_id}", timeout=WAIT)
    assert reply.status_code == 200, reply.text
    body: Frame = reply.json()
    return body


def saved_reply(base_url: str, session_id: str) -> Frame:
    """The conversation's last message once it is no longer streaming (a reply saved after the client left)."""
    deadline = time.monotonic() + WAIT
    while True:
        last: Frame = conversation(base_url, session_id)["messages"][-1]
        if last["status"] != "streaming":
            return last
        assert time.monotonic() < deadline, f"reply still streaming after {WAIT} s: {last}"
        time.sleep(0.05)


def assert_error(frame: Frame, code: str | None, error_type: str = "invalid_request_error") -> None:
    assert frame["event"] == "error", frame
    assert set(frame["data"]) == {"message", "type", "code"}
    assert (frame["data"]["type"], frame["data"]["code"]) == (error_type, code), frame
    assert frame["data"]["message"]
