"""`WS /ws/chat/{session_id}`, the protocol, with a real WebSocket client against a running Parley.

- Frames carry the `/api/chat` events, for the model and agent a message names; the session id
  is a stored conversation, kept across reconnects.
- One reply at a time per socket (`busy`); pings are answered even mid-reply.
- Bad frames and unknown models or agents get an error frame, never a closed socket.

Cancelling, leaving, restarts and concurrent sessions, on SQLite and PostgreSQL: test_ws_storage.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream
from tests.support.ws import (
    AGENTS,
    assert_error,
    chat,
    conversation,
    new_session,
    parley_models,
    read_reply,
    receive,
    socket,
    text_of,
    until_event,
)


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    with running_parley(models=parley_models(upstream), agents=AGENTS) as url:
        yield url


# -- the protocol --


def test_frames_carry_the_same_events_as_api_chat(parley: str) -> None:
    with (
        httpx.Client(base_url=parley) as http,
        connect_sse(http, "POST", "/api/chat", json={"message": "what is 2+2?", "model": "thinker"}) as source,
    ):
        sse = [{"event": event.event, "data": json.loads(event.data)} for event in source.iter_sse()]
    session = new_session()
    with socket(parley, session) as ws:
        frames = chat(ws, "what is 2+2?", model="thinker")

    assert [f["event"] for f in frames] == [f["event"] for f in sse]
    assert [sorted(f["data"]) for f in frames] == [sorted(f["data"]) for f in sse]
    assert (text_of(frames, "reasoning_delta"), text_of(frames)) == ("2 plus 2 is 4", "The answer is 4.")
    start, complete = frames[0]["data"], frames[-1]["data"]
    assert (start["conversation_id"], start["model"]) == (session, "thinker")
    assert (complete["message_id"], complete["finish_reason"]) == (start["message_id"], "stop")


def test_history_is_kept_across_reconnects_with_agent_and_model(parley: str, upstream: Upstream) -> None:
    session = new_session()
    with socket(parley, session) as ws:
        first = chat(ws, f"ahoy {session}", agent="pirate")
    with socket(parley, session) as ws:
        second = chat(ws, f"again {session}", model="text")

    assert text_of(first) == text_of(second) == TEXT_REPLY
    assert (first[0]["data"]["agent"], first[0]["data"]["model"]) == ("pirate", "text")
    sent = upstream.find(f"again {session}").body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", f"ahoy {session}"),
        ("assistant", TEXT_REPLY),
        ("user", f"again {session}"),
    ]
    assert upstream.find(f"ahoy {session}").body["messages"][0] == {"role": "system", "content": "Talk like a pirate."}


def test_ping_is_answered_even_while_a_reply_runs(parley: str) -> None:
    with socket(parley, new_session()) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert receive(ws) == {"event": "pong"}
        ws.send(json.dumps({"message": "x" * 300, "model": "slow-echo"}))  # 1.5 s of reply
        until_event(ws, "text_delta")
        ws.send(json.dumps({"type": "ping"}))
        rest = read_reply(ws)
    assert {"event": "pong"} in rest
    assert rest[-1]["event"] == "message_complete"


def test_a_message_during_a_reply_is_refused_as_busy_and_the_reply_completes(parley: str) -> None:
    session = new_session()
    message = "patience is a virtue " * 15  # 1.5 s of reply
    with socket(parley, session) as ws:
        ws.send(json.dumps({"message": message, "model": "slow-echo"}))
        frames = until_event(ws, "text_delta")
        ws.send(json.dumps({"message": "me next!"}))
        frames += read_reply(ws)
        busy = [f for f in frames if f["event"] == "error"]
        assert len(busy) == 1
        assert_error(busy[0], "busy")
        while frames[-1]["event"] != "message_complete":
            frames += read_reply(ws)
        assert text_of(frames) == message
        assert frames[-1]["data"]["finish_reason"] == "stop"
        # the socket is idle again: the next message is answered
        assert text_of(chat(ws, "me next!")) == "me next!"
    stored = [(m["role"], m["content"]) for m in conversation(parley, session)["messages"]]
    assert stored == [("user", message), ("assistant", message), ("user", "me next!"), ("assistant", "me next!")]


BAD_FRAMES: list[tuple[str, str | bytes]] = [
    ("not JSON", "hello there"),
    ("truncated JSON", '{"message": "hi"'),
    ("a JSON array", '["hi"]'),
    ("a JSON string", '"hi"'),
    ("no message", '{"model": "echo"}'),
    ("empty message", '{"message": ""}'),
    ("unknown type", '{"type": "shout", "message": "hi"}'),
    ("extra field", '{"message": "hi", "colour": "blue"}'),
    ("extra field on a control frame", '{"type": "ping", "id": 1}'),
    ("message not a string", '{"message": 42}'),
    ("max_tokens not a number", '{"message": "hi", "max_tokens": "lots"}'),
    ("max_tokens zero", '{"message": "hi", "max_tokens": 0}'),
    ("temperature too high", '{"message": "hi", "temperature": 9}'),
    ("type not a string", '{"type": ["ping"]}'),
    ("binary, not JSON", b"\x00\xff\xfe binary"),
    ("binary JSON, not UTF-8", b'{"message": "caf\xe9"}'),
]


@pytest.mark.parametrize(("frame"), [frame for _, frame in BAD_FRAMES], ids=[name for name, _ in BAD_FRAMES])
def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(parley: str, frame: str | bytes) -> None:
    session = new_session()
    with socket(parley, session) as ws:
        ws.send(frame)
        assert_error(receive(ws), "invalid_frame")
        assert text_of(chat(ws, "still here?")) == "still here?"
    assert [m["content"] for m in conversation(parley, session)["messages"]] == ["still here?", "still here?"]


def test_binary_frames_of_json_are_accepted(parley: str) -> None:
    with socket(parley, new_session()) as ws:
        ws.send(json.dumps({"message": "as bytes"}).encode())
        assert text_of(read_reply(ws)) == "as bytes"


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"model": "no-such-model"}, "model_not_found", "no-such-model"),
        ({"agent": "nobody"}, "agent_not_found", "nobody"),
    ],
    ids=["model", "agent"],
)
def test_an_unknown_model_or_agent_gets_an_openai_style_error(
    parley: str, fields: dict[str, str], code: str | None, named: str
) -> None:
    session = new_session()
    with socket(parley, session) as ws:
        frames = chat(ws, "hello?", **fields)
        assert len(frames) == 1
        assert_error(frames[0], code)
        assert named in frames[0]["data"]["message"]
        assert text_of(chat(ws, "hello?")) == "hello?"
    assert len(conversation(parley, session)["messages"]) == 2  # the refused message was not kept


def test_cancel_with_nothing_running_is_an_error(parley: str) -> None:
    with socket(parley, new_session()) as ws:
        ws.send(json.dumps({"type": "cancel"}))
        assert_error(receive(ws), "nothing_to_cancel")
        assert text_of(chat(ws, "ok")) == "ok"
