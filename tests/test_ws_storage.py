"""`WS /ws/chat/{session_id}`: what is stored, on SQLite and PostgreSQL, with a real client.

- History survives a server restart: the model sees the earlier turns, the API lists them.
- A cancel frame, or a client that leaves, stops the reply: saved as cancelled with its partial
  text, and the upstream connection closed. A reply that had ended is saved whole whatever the
  client does meanwhile.
- Two sessions at once: concurrent replies, no crosstalk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from websockets.asyncio.client import connect as connect_async

from parley.store import async_url
from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream
from tests.support.ws import (
    AGENTS,
    WAIT,
    chat,
    conversation,
    new_session,
    parley_models,
    read_reply,
    saved_reply,
    socket,
    text_of,
    until_event,
)

pytest_plugins = ["tests.support.databases"]


@pytest.fixture
def stored(upstream: Upstream, database_url: str, tmp_path: Path) -> Iterator[str]:
    """A server on a fresh SQLite or PostgreSQL database."""
    with running_parley(
        models=parley_models(upstream), agents=AGENTS, database_url=database_url, data_dir=tmp_path
    ) as url:
        yield url


def test_history_survives_a_server_restart(upstream: Upstream, database_url: str, tmp_path: Path) -> None:
    session = new_session()
    settings: dict[str, Any] = {"models": parley_models(upstream), "database_url": database_url, "data_dir": tmp_path}
    with running_parley(**settings) as url, socket(url, session) as ws:
        assert text_of(chat(ws, f"one {session}", model="text")) == TEXT_REPLY
        assert text_of(chat(ws, f"two {session}", model="text")) == TEXT_REPLY
    with running_parley(**settings) as url:
        with socket(url, session) as ws:
            assert text_of(chat(ws, f"three {session}", model="text")) == TEXT_REPLY
        stored = conversation(url, session)

    sent = upstream.find(f"three {session}").body["messages"]
    expected = [
        ("user", f"one {session}"),
        ("assistant", TEXT_REPLY),
        ("user", f"two {session}"),
        ("assistant", TEXT_REPLY),
        ("user", f"three {session}"),
    ]
    assert [(m["role"], m["content"]) for m in sent] == expected
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [*expected, ("assistant", TEXT_REPLY)]
    assert {m["status"] for m in stored["messages"]} == {"complete"}
    assert stored["message_count"] == 6


def test_a_cancel_frame_stops_the_reply_and_it_is_saved_as_cancelled(stored: str, upstream: Upstream) -> None:
    session = new_session()
    with socket(stored, session) as ws:
        ws.send(json.dumps({"message": f"count {session}", "model": "slow"}))
        frames = until_event(ws, "text_delta")
        frames += until_event(ws, "text_delta")
        ws.send(json.dumps({"type": "cancel"}))
        frames += read_reply(ws)
        assert frames[-1]["event"] == "message_complete"
        assert frames[-1]["data"]["finish_reason"] == "cancelled"
        # the conversation goes on
        assert text_of(chat(ws, "after the cancel")) == "after the cancel"

    seen = upstream.find(f"count {session}")
    assert seen.wait_ended()
    assert seen.client_closed
    reply = conversation(stored, session)["messages"][1]
    assert (reply["status"], reply["content"]) == ("cancelled", text_of(frames))
    assert reply["content"].startswith("tick tick ")


def test_a_client_that_leaves_mid_reply_cancels_it(stored: str, upstream: Upstream) -> None:
    session = new_session()
    with socket(stored, session) as ws:
        ws.send(json.dumps({"message": f"leaving {session}", "model": "slow", "on_disconnect": "cancel"}))
        frames = until_event(ws, "text_delta")
    seen = upstream.find(f"leaving {session}")
    assert seen.wait_ended()
    assert seen.client_closed
    reply = saved_reply(stored, session)
    assert reply["status"] == "cancelled"
    assert reply["content"].startswith(text_of(frames))


def test_a_cancel_then_leaving_at_once_still_saves_the_reply(stored: str, upstream: Upstream) -> None:
    session = new_session()
    with socket(stored, session) as ws:
        ws.send(json.dumps({"message": f"bye {session}", "model": "slow"}))
        frames = until_event(ws, "text_delta")
        ws.send(json.dumps({"type": "cancel"}))
    assert upstream.find(f"bye {session}").wait_ended()
    reply = saved_reply(stored, session)
    assert reply["status"] == "cancelled"
    assert reply["content"].startswith(text_of(frames))


def test_two_sessions_at_once_each_get_their_own_replies(stored: str, upstream: Upstream) -> None:
    first, second = new_session(), new_session()
    with socket(stored, first) as one, socket(stored, second) as two:
        one.send(json.dumps({"message": f"endless {first}", "model": "slow"}))  # streams until cancelled
        frames_one = until_event(one, "text_delta")
        two.send(json.dumps({"message": f"{second} " * 5, "model": "slow-echo"}))
        frames_two = read_reply(two)  # a whole reply, while the first is still streaming
        one.send(json.dumps({"type": "cancel"}))
        frames_one += read_reply(one)

    assert text_of(frames_two) == f"{second} " * 5
    assert frames_two[-1]["data"]["finish_reason"] == "stop"
    assert set(text_of(frames_one).split()) == {"tick"}
    assert frames_one[-1]["data"]["finish_reason"] == "cancelled"
    assert (frames_one[0]["data"]["conversation_id"], frames_two[0]["data"]["conversation_id"]) == (first, second)
    sent = upstream.find(f"endless {first}").body["messages"]
    assert [m["content"] for m in sent] == [f"endless {first}"]
    stored_one = [(m["role"], m["content"], m["status"]) for m in conversation(stored, first)["messages"]]
    assert stored_one == [("user", f"endless {first}", "complete"), ("assistant", text_of(frames_one), "cancelled")]
    stored_two = [(m["role"], m["content"], m["status"]) for m in conversation(stored, second)["messages"]]
    assert stored_two == [("user", f"{second} " * 5, "complete"), ("assistant", f"{second} " * 5, "complete")]


async def lock_waits(engine: AsyncEngine) -> int:
    """How many sessions on this database wait for a lock (a new connection: each sees fresh activity)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    async with engine.connect() as probe:
        return int(await probe.scalar(text(query)) or 0)


@pytest.mark.parametrize("how", ["cancel", "leave"])
async def test_a_reply_being_saved_is_saved_whole_even_if_the_client_cancels_or_leaves(
    upstream: Upstream, postgres_url: str, tmp_path: Path, how: str
) -> None:
    """The model finished; while the reply's row is locked by another writer, the client cancels or leaves."""
    session = new_session()
    message = "saved in full " * 4
    with running_parley(models=parley_models(upstream), database_url=postgres_url, data_dir=tmp_path) as url:
        async with connect_async(url.replace("http://", "ws://") + f"/ws/chat/{session}") as ws:
            await ws.send(json.dumps({"message": message, "model": "slow-echo"}))
            start = json.loads(await ws.recv())
            engine = create_async_engine(async_url(postgres_url), poolclass=NullPool)
            try:
                async with engine.connect() as other, other.begin():
                    locking = text("SELECT 1 FROM messages WHERE id = :id FOR UPDATE")
                    await other.execute(locking, {"id": start["data"]["message_id"]})
                    deadline = time.monotonic() + WAIT
                    while await lock_waits(engine) == 0:  # the run ended; its save waits for the row
                        assert time.monotonic() < deadline, "the reply was never saved"
                        await asyncio.sleep(0.02)
                    frames = [json.loads(await ws.recv()) for _ in range(len(message) // 2)]
                    assert "".join(f["data"]["text"] for f in frames) == message
                    if how == "cancel":
                        await ws.send(json.dumps({"type": "cancel"}))
                        await ws.send(json.dumps({"type": "ping"}))
                        assert json.loads(await ws.recv()) == {"event": "pong"}  # the cancel was handled
                    else:  # the server answers the close frame at once, and ends the connection after the save
                        closing = asyncio.create_task(ws.close())
                        while ws.protocol.close_rcvd is None:
                            assert time.monotonic() < deadline, "the server never answered the close frame"
                            await asyncio.sleep(0.02)
            finally:
                await engine.dispose()
            if how == "leave":
                await closing
            else:
                complete = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                assert (complete["event"], complete["data"]["finish_reason"]) == ("message_complete", "stop")
        reply = saved_reply(url, session)
    assert (reply["status"], reply["content"]) == ("complete", message)
