"""Streams that survive, on three `parley serve` processes sharing PostgreSQL and Redis: a client
that drops resumes on another instance and gets exactly the rest; an EventSource-style client
reconnects by itself through a connection that is cut; a cancel sent to one instance stops a run
on another; a retried POST with the same Idempotency-Key gets the same run; a conversation says
which run is in progress; another owner's run is not found; a finished run's events expire (410);
a run whose instance died is not resumable, and is never generated twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from aiohttp_sse_client import client as sse_client
from httpx_sse import ServerSentEvent, connect_sse
from websockets.sync.client import connect

from tests.support.cutting_proxy import cutting_proxy
from tests.support.fleet import Fleet, fleet_of
from tests.support.process import parley_process

pytestmark = pytest.mark.slow

SLOW_REPLY = " ".join(f"word{i}" for i in range(80))
MODELS = (
    '[[models]]\nname = "echo"\nprovider = "fake"\n'
    f'[[models]]\nname = "slow"\nprovider = "fake"\nreplies = ["{SLOW_REPLY}"]\nchunk_chars = 4\ndelay_ms = 40\n'
)
WAIT = 30.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of(3, tmp_path_factory.mktemp("runs-fleet"), MODELS, "run_log_seconds = 3\n") as running:
        yield running


def new_conversation() -> str:
    return f"resume-{uuid.uuid4().hex[:12]}"


def events_until(source: Iterator[ServerSentEvent], stop: int | None = None) -> list[ServerSentEvent]:
    """Events up to the end of the reply, or until `stop` text deltas came."""
    seen: list[ServerSentEvent] = []
    deltas = 0
    for event in source:
        seen.append(event)
        deltas += event.event == "text_delta"
        if event.event in ("message_complete", "error") or (stop is not None and deltas >= stop):
            break
    return seen


def text_of(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["text"] for e in events if e.event == "text_delta")


def start_and_drop(url: str, deltas: int) -> list[ServerSentEvent]:
    """Start a slow reply and leave after `deltas` text deltas: the events this client saw."""
    payload = {"message": "hello", "model": "slow", "conversation_id": new_conversation()}
    with httpx.Client(timeout=WAIT) as http, connect_sse(http, "POST", f"{url}/api/chat", json=payload) as source:
        assert source.response.status_code == 200
        return events_until(source.iter_sse(), stop=deltas)


def resume(url: str, run_id: str, last_event_id: str | None, **headers: str) -> list[ServerSentEvent]:
    sent = {**headers, **({"Last-Event-ID": last_event_id} if last_event_id is not None else {})}
    with (
        httpx.Client(timeout=WAIT) as http,
        connect_sse(http, "GET", f"{url}/api/runs/{run_id}/events", headers=sent) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        return events_until(source.iter_sse())


def stored_reply(url: str, conversation_id: str, status: str = "complete", **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        detail = httpx.get(f"{url}/api/conversations/{conversation_id}", headers=headers, timeout=WAIT).json()
        reply: dict[str, Any] = detail["messages"][-1]
        if reply["status"] == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def assert_numbered_from_one(events: list[ServerSentEvent]) -> None:
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))


def test_a_client_that_drops_resumes_on_another_instance_and_gets_exactly_the_rest(fleet: Fleet) -> None:
    one, two, three = fleet.urls
    first = start_and_drop(one, deltas=5)
    start = json.loads(first[0].data)
    rest = resume(two, start["run_id"], first[-1].id)
    assert int(rest[0].id) == int(first[-1].id) + 1
    assert_numbered_from_one(first + rest)
    assert rest[-1].event == "message_complete"
    reply = stored_reply(three, start["conversation_id"])
    assert text_of(first) + text_of(rest) == reply["content"] == SLOW_REPLY
    # `?after=N` does the same, and a resume from the start replays the whole run
    assert text_of(resume(three, start["run_id"], None)) == SLOW_REPLY
    with (
        httpx.Client(timeout=WAIT) as http,
        connect_sse(http, "GET", f"{two}/api/runs/{start['run_id']}/events?after={first[-1].id}") as source,
    ):
        assert text_of(events_until(source.iter_sse())) == text_of(rest)


def test_an_event_source_reconnects_by_itself_to_another_instance(fleet: Fleet) -> None:
    one, two, three = fleet.urls
    start = json.loads(start_and_drop(one, deltas=1)[0].data)
    ports = [("127.0.0.1", int(url.rsplit(":", 1)[1])) for url in (two, three)]

    async def follow(port: int) -> list[tuple[str, str, str]]:
        received: list[tuple[str, str, str]] = []
        url = f"http://127.0.0.1:{port}/api/runs/{start['run_id']}/events"
        async with sse_client.EventSource(url, reconnection_time=timedelta(milliseconds=100)) as source:
            async for event in source:
                received.append((event.last_event_id, event.type, event.data))
                if event.type == "message_complete":
                    break
        return received

    with cutting_proxy(ports, cut_after_events=5) as proxy:
        received = asyncio.run(asyncio.wait_for(follow(proxy.port), WAIT))
        assert proxy.connections >= 2  # cut once, and reconnected (to the other instance)
    ids = [int(event_id) for event_id, _, _ in received]
    assert ids == sorted(set(ids)) and ids == list(range(ids[0], ids[0] + len(ids)))
    text = "".join(json.loads(data)["text"] for _, name, data in received if name == "text_delta")
    assert text == stored_reply(one, start["conversation_id"])["content"] == SLOW_REPLY


def test_a_cancel_sent_to_one_instance_stops_a_run_on_another(fleet: Fleet) -> None:
    one, two, three = fleet.urls
    conversation = new_conversation()
    payload = {"message": "hello", "model": "slow", "conversation_id": conversation}
    with httpx.Client(timeout=WAIT) as http, connect_sse(http, "POST", f"{one}/api/chat", json=payload) as source:
        events = source.iter_sse()
        head = events_until(events, stop=3)
        run_id = json.loads(head[0].data)["run_id"]
        answer = httpx.post(f"{two}/api/runs/{run_id}/cancel", timeout=WAIT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "cancelled"
        tail = events_until(events)
    assert tail[-1].event == "message_complete"
    assert json.loads(tail[-1].data)["finish_reason"] == "cancelled"
    reply = stored_reply(three, conversation, status="cancelled")
    assert reply["status"] == "cancelled"
    assert reply["content"] == text_of(head + tail) and len(reply["content"]) < len(SLOW_REPLY)
    # a cancel of a run that ended changes nothing
    again = httpx.post(f"{three}/api/runs/{run_id}/cancel", timeout=WAIT)
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_a_retried_post_with_the_same_idempotency_key_gets_the_same_run(fleet: Fleet) -> None:
    one, two, three = fleet.urls
    conversation, key = new_conversation(), uuid.uuid4().hex
    body = {"message": "hello", "model": "slow", "conversation_id": conversation}
    with httpx.Client(timeout=WAIT) as http:
        with connect_sse(http, "POST", f"{one}/api/chat", json=body, headers={"Idempotency-Key": key}) as source:
            first = events_until(source.iter_sse(), stop=2)
        with connect_sse(http, "POST", f"{two}/api/chat", json=body, headers={"Idempotency-Key": key}) as source:
            assert source.response.headers["Idempotent-Replayed"] == "true"
            retried = events_until(source.iter_sse())
        other = http.post(f"{three}/api/chat", json={**body, "message": "else"}, headers={"Idempotency-Key": key})
    assert json.loads(retried[0].data)["run_id"] == json.loads(first[0].data)["run_id"]
    assert_numbered_from_one(retried)
    assert text_of(retried) == SLOW_REPLY
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    stored_reply(three, conversation)
    messages = httpx.get(f"{three}/api/conversations/{conversation}", timeout=WAIT).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "hello"), ("assistant", SLOW_REPLY)]


def test_a_conversation_shows_its_active_run_to_a_page_opened_later(fleet: Fleet) -> None:
    one, two, _ = fleet.urls
    first = start_and_drop(one, deltas=2)
    start = json.loads(first[0].data)
    detail = httpx.get(f"{two}/api/conversations/{start['conversation_id']}", timeout=WAIT).json()
    active = detail["active_run"]
    assert active["run_id"] == start["run_id"] and active["last_seq"] >= len(first)
    rest = resume(two, active["run_id"], str(active["last_seq"]))
    assert rest[-1].event == "message_complete"
    stored_reply(two, start["conversation_id"])
    assert httpx.get(f"{two}/api/conversations/{start['conversation_id']}", timeout=WAIT).json()["active_run"] is None


def test_another_owners_run_is_not_found_and_a_long_finished_one_is_gone(fleet: Fleet) -> None:
    one, two, _ = fleet.urls
    alice, bob = {"X-Parley-User": "alice"}, {"X-Parley-User": "bob"}
    payload = {"message": "hi", "model": "echo", "conversation_id": new_conversation()}
    with (
        httpx.Client(timeout=WAIT) as http,
        connect_sse(http, "POST", f"{one}/api/chat", json=payload, headers=alice) as source,
    ):
        events = events_until(source.iter_sse())
    run_id = json.loads(events[0].data)["run_id"]
    assert text_of(resume(two, run_id, "0", **alice)) == "hi"
    for path, method in ((f"/api/runs/{run_id}/events", "GET"), (f"/api/runs/{run_id}/cancel", "POST")):
        refused = httpx.request(method, f"{two}{path}", headers=bob, timeout=WAIT)
        missing = httpx.request(method, f"{two}{path.replace(run_id, 'run_' + '0' * 32)}", headers=bob, timeout=WAIT)
        assert refused.status_code == missing.status_code == 404
        assert refused.json() == missing.json()
    time.sleep(3.5)  # run_log_seconds: the events expire, the reply stays in the conversation
    gone = httpx.get(f"{two}/api/runs/{run_id}/events", headers=alice, timeout=WAIT)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "run_expired"
    assert gone.headers["Location"] == f"/api/conversations/{payload['conversation_id']}"
    assert httpx.get(f"{two}/api/runs/{run_id}/events", headers=bob, timeout=WAIT).status_code == 404


def test_a_run_whose_instance_died_is_not_resumable_and_not_generated_again(fleet: Fleet) -> None:
    one = fleet.urls[0]
    with parley_process(fleet.config) as doomed:
        first = start_and_drop(doomed.url, deltas=3)
        start = json.loads(first[0].data)
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(10)
    deadline = time.monotonic() + WAIT
    while (answer := httpx.get(f"{one}/api/runs/{start['run_id']}/events", timeout=WAIT)).status_code == 200:
        answer.close()
        assert time.monotonic() < deadline, "a dead instance's run still resumable"
        time.sleep(0.5)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "run_not_resumable"
    assert answer.headers["Location"] == f"/api/conversations/{start['conversation_id']}"
    cancel = httpx.post(f"{one}/api/runs/{start['run_id']}/cancel", timeout=WAIT)
    assert cancel.status_code == 409
    detail = httpx.get(f"{one}/api/conversations/{start['conversation_id']}", timeout=WAIT).json()
    assert detail["active_run"] is None
    assert len(detail["messages"]) == 2  # the user's message and the one reply: nothing started it again


def test_a_websocket_resumes_another_instances_run_with_seq_numbers(fleet: Fleet) -> None:
    one, two, three = fleet.urls
    session = new_conversation()
    with connect(one.replace("http://", "ws://") + f"/ws/chat/{session}", open_timeout=WAIT) as ws:
        ws.send(json.dumps({"message": "hello", "model": "slow"}))
        first = [json.loads(ws.recv(timeout=WAIT)) for _ in range(4)]
    run_id = first[0]["data"]["run_id"]
    assert [frame["seq"] for frame in first] == [1, 2, 3, 4]
    with connect(two.replace("http://", "ws://") + f"/ws/chat/{session}", open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "resume", "run_id": run_id, "after": first[-1]["seq"]}))
        rest = [json.loads(ws.recv(timeout=WAIT))]
        while rest[-1]["event"] not in ("message_complete", "error"):
            rest.append(json.loads(ws.recv(timeout=WAIT)))
    frames = first + rest
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))
    text = "".join(frame["data"]["text"] for frame in frames if frame["event"] == "text_delta")
    assert text == stored_reply(three, session)["content"] == SLOW_REPLY
