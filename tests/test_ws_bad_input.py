"""Bad frames on `WS /ws/chat/{session_id}` get an error frame and the socket stays open.

The same limits as HTTP bodies: `max_body_bytes` per frame, `max_json_depth` levels of nesting,
strict and bounded fields; nothing a refused frame carried is stored. Only a frame beyond the
protocol's limit (four times `max_body_bytes`) closes the socket, with a close frame (1009).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

from tests.support.server import running_parley
from tests.support.ws import WAIT, assert_error, chat, conversation, new_session, read_reply, receive, socket, text_of

LIMIT = 256 * 1024  # max_body_bytes here
MODELS = [
    {"name": "echo", "provider": "fake", "chunk_chars": 3},
    {"name": "ok", "provider": "fake", "replies": ["ok"]},
]


@pytest.fixture(scope="module")
def parley() -> Iterator[str]:
    with running_parley(models=MODELS, max_body_bytes=LIMIT) as url:
        yield url


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("100,000 nested lists", nested(100_000), "json_too_deep"),
    ("a field nested 65 deep", '{"message": "hi", "model": ' + nested(64) + "}", "json_too_deep"),
    ("max_tokens beyond 64 bits", '{"message": "hi", "max_tokens": ' + "9" * 30 + "}", "invalid_frame"),
    ("max_tokens over the bound", '{"message": "hi", "max_tokens": 1000001}', "invalid_frame"),
    ("max_tokens true", '{"message": "hi", "max_tokens": true}', "invalid_frame"),
    ("max_tokens a string", '{"message": "hi", "max_tokens": "5"}', "invalid_frame"),
    ("temperature NaN", '{"message": "hi", "temperature": NaN}', "invalid_frame"),
    ("temperature Infinity", '{"message": "hi", "temperature": Infinity}', "invalid_frame"),
    ("temperature a string", '{"message": "hi", "temperature": "0.5"}', "invalid_frame"),
    ("lone surrogate", '{"message": "\\ud800"}', "invalid_frame"),
    ("huge model name", json.dumps({"message": "hi", "model": "m" * 10_000}), "invalid_frame"),
    ("huge agent name", json.dumps({"message": "hi", "agent": "a" * 10_000}), "invalid_frame"),
    ("null", "null", "invalid_frame"),
    ("an array", "[1, 2]", "invalid_frame"),
    ("empty text", "", "invalid_frame"),
    ("empty binary", b"", "invalid_frame"),
    ("over the frame limit", json.dumps({"message": "x" * LIMIT}), "frame_too_large"),
    ("over the frame limit, binary", json.dumps({"message": "x" * LIMIT}).encode(), "frame_too_large"),
    # fewer characters than the limit, more bytes: two bytes each in UTF-8
    (
        "over the limit in UTF-8",
        json.dumps({"message": "é" * (LIMIT // 2 + 10)}, ensure_ascii=False),
        "frame_too_large",
    ),
]


@pytest.mark.parametrize(("frame", "code"), [f[1:] for f in BAD_FRAMES], ids=[f[0] for f in BAD_FRAMES])
def test_a_bad_frame_gets_an_error_frame_and_stores_nothing(parley: str, frame: str | bytes, code: str) -> None:
    session = new_session()
    with socket(parley, session) as ws:
        ws.send(frame)
        error = receive(ws)
        assert_error(error, code)
        assert len(error["data"]["message"]) < 500  # a huge frame is not echoed back
        assert httpx.get(f"{parley}/api/conversations/{session}", timeout=WAIT).status_code == 404
        assert text_of(chat(ws, "still here?")) == "still here?"
    assert [m["content"] for m in conversation(parley, session)["messages"]] == ["still here?", "still here?"]


def test_a_frame_just_within_the_limit_is_served(parley: str) -> None:
    # More characters than a quarter of the limit: its size is measured, in bytes (three each here).
    message = "€" * (LIMIT // 4 + 1000)
    frame = json.dumps({"message": message, "model": "ok"}, ensure_ascii=False)
    assert len(frame) * 4 > LIMIT >= len(frame.encode())
    session = new_session()
    with socket(parley, session) as ws:
        ws.send(frame)
        assert text_of(read_reply(ws)) == "ok"
    assert [m["content"] for m in conversation(parley, session)["messages"]] == [message, "ok"]


def test_a_frame_beyond_the_protocol_limit_closes_with_1009(parley: str) -> None:
    session = new_session()
    with socket(parley, session) as ws:
        ws.send(json.dumps({"message": "x" * (4 * LIMIT + 1)}))
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None  # a close frame, not a dropped connection
    assert closed.value.rcvd.code == 1009
    assert httpx.get(f"{parley}/api/conversations/{session}", timeout=WAIT).status_code == 404


@pytest.mark.parametrize("session", ["ws-newline%0A", "ws%00nul", "-dash-first", "c" * 129])
def test_a_session_id_no_conversation_can_have(parley: str, session: str) -> None:
    before = httpx.get(f"{parley}/api/conversations", params={"limit": 200}, timeout=WAIT).json()["data"]
    with socket(parley, session) as ws:
        ws.send(json.dumps({"message": "hi"}))
        error = receive(ws)
        assert_error(error, "invalid_value")
        assert "conversation id" in error["data"]["message"]
        ws.send(json.dumps({"type": "ping"}))
        assert receive(ws) == {"event": "pong"}  # still open
    after = httpx.get(f"{parley}/api/conversations", params={"limit": 200}, timeout=WAIT).json()["data"]
    assert after == before


def test_a_session_id_with_nul_on_postgresql(postgres_url: str) -> None:
    """PostgreSQL refuses to compare text holding NUL: the id is refused before it gets there."""
    with running_parley(models=MODELS, database_url=postgres_url) as url, socket(url, "ws%00nul") as ws:
        ws.send(json.dumps({"message": "hi"}))
        error = receive(ws)
        assert_error(error, "invalid_value")
        assert "conversation id" in error["data"]["message"]
        assert httpx.get(f"{url}/api/conversations", timeout=WAIT).json()["data"] == []
