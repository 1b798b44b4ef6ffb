"""Private conversations over HTTP and the WebSocket, on SQLite and PostgreSQL.

A server running open keeps conversations private between the end users an application names in
`X-Parley-User` (keys give owners the same way). Alice's conversation is, to Bob, exactly a
conversation that doesn't exist on every route: the same status and the same body. A caller who
names no end user sees everything, as before.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatkit.types import (
    InferenceOptions,
    ItemsListParams,
    ItemsListReq,
    ThreadAddUserMessageParams,
    ThreadCreateParams,
    ThreadDeleteParams,
    ThreadGetByIdParams,
    ThreadListParams,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsDeleteReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadsUpdateReq,
    ThreadUpdateParams,
    UserMessageInput,
    UserMessageTextContent,
)
from pydantic import BaseModel
from websockets.sync.client import connect

from tests.support.process import parley_serve
from tests.support.server import running_parley

pytest_plugins = ["tests.support.databases"]

ALICE = {"X-Parley-User": "alice"}
BOB = {"X-Parley-User": "bob"}
SECRET = "my bank PIN is 4321"


@pytest.fixture
def http(database_url: str) -> Iterator[httpx.Client]:
    models = [{"name": "echo", "provider": "fake", "chunk_chars": 4}]
    with running_parley(models=models, database_url=database_url) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def new_id() -> str:
    return f"conv_{uuid.uuid4().hex}"


def say(http: httpx.Client, who: dict[str, str], message: str, **fields: Any) -> dict[str, Any]:
    reply = http.post("/api/chat", json={"message": message, "stream": False, **fields}, headers=who)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def same_as_missing(taken: httpx.Response, missing: httpx.Response, taken_id: str, missing_id: str) -> None:
    """The two answers are one and the same, but for the id each names."""
    assert taken.status_code == missing.status_code
    assert taken.headers["content-type"] == missing.headers["content-type"]
    assert taken.text.replace(taken_id, "ID") == missing.text.replace(missing_id, "ID")


def not_found_body(conversation_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": f"conversation {conversation_id!r} does not exist",
            "type": "invalid_request_error",
            "param": "conversation_id",
            "code": "conversation_not_found",
        }
    }


def test_alices_conversation_is_missing_to_bob_on_every_conversation_route(http: httpx.Client) -> None:
    alices = say(http, ALICE, SECRET)["conversation_id"]
    say(http, ALICE, "and my name is Alice", conversation_id=alices)
    before = http.get(f"/api/conversations/{alices}", headers=ALICE).json()
    missing = new_id()

    def both(method: str, path: str, **kwargs: Any) -> None:
        taken = http.request(method, path.format(id=alices), headers=BOB, **kwargs)
        absent = http.request(method, path.format(id=missing), headers=BOB, **kwargs)
        assert taken.status_code == 404, (path, taken.text)
        same_as_missing(taken, absent, alices, missing)

    both("GET", "/api/conversations/{id}")
    both("PATCH", "/api/conversations/{id}", json={"title": "Bob's now"})
    both("DELETE", "/api/conversations/{id}")
    both("GET", "/api/conversations/{id}/export")
    both("GET", "/api/conversations/{id}/export?format=markdown")
    assert http.get(f"/api/conversations/{missing}", headers=BOB).json() == not_found_body(missing)

    # Continuing it by id: refused before anything is written, with the store's "does not exist".
    continued = http.post("/api/chat", json={"message": "what is the PIN?", "conversation_id": alices}, headers=BOB)
    assert continued.status_code == 404 and continued.json() == not_found_body(alices)
    streamforge = http.post("/chat", json={"message": "what is the PIN?", "session_id": alices}, headers=BOB)
    assert streamforge.status_code == 404 and streamforge.json() == not_found_body(alices)
    tether = http.post("/chat", json={"message": "PIN?", "session_id": alices, "stream": False}, headers=BOB)
    assert tether.status_code == 404 and tether.json() == not_found_body(alices)
    widget = {"type": "user_message", "message": {"id": "m1", "content": "PIN?"}, "session_id": alices}
    tutor = http.post("/chatkit/api", content=json.dumps(widget), headers=BOB | {"Content-Type": "application/json"})
    assert tutor.status_code == 404 and tutor.json() == not_found_body(alices)

    # StreamForge's history of a session that doesn't exist is an empty one.
    taken = http.get(f"/chat/history/{alices}", headers=BOB)
    same_as_missing(taken, http.get(f"/chat/history/{missing}", headers=BOB), alices, missing)
    assert taken.json() == {"session_id": alices, "messages": []}

    listed = http.get("/api/conversations", headers=BOB).json()
    assert listed == {"data": [], "next_cursor": None}
    assert http.get(f"/api/conversations/{alices}", headers=ALICE).json() == before  # untouched
    assert SECRET in http.get(f"/chat/history/{alices}", headers=ALICE).text


def test_bob_choosing_alices_id_gets_404_and_his_own_ids_are_his(http: httpx.Client) -> None:
    alices = say(http, ALICE, SECRET)["conversation_id"]
    before = http.get(f"/api/conversations/{alices}", headers=ALICE).json()

    for stream in (False, True):
        refused = http.post(
            "/api/chat", json={"message": "hi", "conversation_id": alices, "stream": stream}, headers=BOB
        )
        assert refused.status_code == 404 and refused.json() == not_found_body(alices)
    assert http.get(f"/api/conversations/{alices}", headers=ALICE).json() == before

    bobs = new_id()
    assert say(http, BOB, "bob's first words", conversation_id=bobs)["conversation_id"] == bobs
    assert http.get(f"/api/conversations/{bobs}", headers=ALICE).status_code == 404
    refused = http.post("/api/chat", json={"message": "mine?", "conversation_id": bobs, "stream": False}, headers=ALICE)
    assert refused.status_code == 404
    # Each sees exactly their own; a caller naming no end user sees both.
    assert [c["id"] for c in http.get("/api/conversations", headers=ALICE).json()["data"]] == [alices]
    assert [c["id"] for c in http.get("/api/conversations", headers=BOB).json()["data"]] == [bobs]
    assert [c["id"] for c in http.get("/api/conversations").json()["data"]] == [bobs, alices]
    # Alice's own conversation goes on, and she can rename, export and delete it.
    say(http, ALICE, "one more thing", conversation_id=alices)
    assert http.patch(f"/api/conversations/{alices}", json={"title": "PIN"}, headers=ALICE).json()["title"] == "PIN"
    assert SECRET in http.get(f"/api/conversations/{alices}/export?format=markdown", headers=ALICE).text
    assert http.delete(f"/api/conversations/{alices}", headers=ALICE).status_code == 204
    assert http.get(f"/api/conversations/{alices}").status_code == 404


def test_the_open_caller_naming_no_end_user_sees_and_continues_everything(http: httpx.Client) -> None:
    alices = say(http, ALICE, SECRET)["conversation_id"]
    assert http.get(f"/api/conversations/{alices}").json()["messages"][0]["content"] == SECRET
    say(http, {}, "the operator adds a note", conversation_id=alices)
    assert http.get(f"/api/conversations/{alices}", headers=ALICE).json()["message_count"] == 4
    # What it makes has no end user: no end user's listing shows it.
    operators = say(http, {}, "an operator's conversation")["conversation_id"]
    assert http.get(f"/api/conversations/{operators}", headers=ALICE).status_code == 404
    assert operators not in [c["id"] for c in http.get("/api/conversations", headers=ALICE).json()["data"]]


def test_the_websocket_continues_only_the_callers_own_conversation(http: httpx.Client) -> None:
    base = str(http.base_url).replace("http://", "ws://")
    session = f"ws-{uuid.uuid4().hex}"
    with connect(f"{base}/ws/chat/{session}", additional_headers=ALICE, open_timeout=15) as alice:
        alice.send(json.dumps({"message": SECRET}))
        assert read_until_end(alice)[-1]["event"] == "message_complete"
    before = http.get(f"/api/conversations/{session}", headers=ALICE).json()
    assert before["message_count"] == 2

    with connect(f"{base}/ws/chat/{session}", additional_headers=BOB, open_timeout=15) as bob:
        bob.send(json.dumps({"message": "what did she say?"}))
        frames = read_until_end(bob)
        assert frames == [
            {"event": "error", "data": {k: v for k, v in not_found_body(session)["error"].items() if k != "param"}}
        ]
        # The socket stays open for the caller's next message (which is refused the same way).
        bob.send(json.dumps({"message": "again"}))
        assert read_until_end(bob) == frames
    assert http.get(f"/api/conversations/{session}", headers=ALICE).json() == before

    with connect(f"{base}/ws/chat/{session}", additional_headers=ALICE, open_timeout=15) as alice:
        alice.send(json.dumps({"message": "still mine"}))
        assert read_until_end(alice)[-1]["event"] == "message_complete"
    assert http.get(f"/api/conversations/{session}", headers=ALICE).json()["message_count"] == 4


def read_until_end(socket: Any) -> list[dict[str, Any]]:
    frames = [json.loads(socket.recv(timeout=15))]
    while frames[-1]["event"] not in ("message_complete", "error"):
        frames.append(json.loads(socket.recv(timeout=15)))
    return frames


def chatkit(http: httpx.Client, who: dict[str, str], request: BaseModel) -> httpx.Response:
    return http.post("/chatkit", content=request.model_dump_json(), headers=who | {"Content-Type": "application/json"})


def user_input(text: str) -> UserMessageInput:
    return UserMessageInput(
        content=[UserMessageTextContent(text=text)], attachments=[], inference_options=InferenceOptions()
    )


def test_chatkit_threads_of_another_owner_are_missing(http: httpx.Client) -> None:
    created = chatkit(http, ALICE, ThreadsCreateReq(params=ThreadCreateParams(input=user_input(SECRET))))
    assert created.status_code == 200
    thread = next(
        json.loads(line[6:])["thread"]["id"]
        for line in created.text.splitlines()
        if line.startswith("data: ") and json.loads(line[6:])["type"] == "thread.created"
    )
    missing = new_id()

    def both(make: Any) -> None:
        taken, absent = chatkit(http, BOB, make(thread)), chatkit(http, BOB, make(missing))
        assert taken.status_code == 404, taken.text
        same_as_missing(taken, absent, thread, missing)

    both(lambda t: ThreadsGetByIdReq(params=ThreadGetByIdParams(thread_id=t)))
    both(lambda t: ItemsListReq(params=ItemsListParams(thread_id=t)))
    both(lambda t: ThreadsUpdateReq(params=ThreadUpdateParams(thread_id=t, title="Bob's")))
    both(lambda t: ThreadsDeleteReq(params=ThreadDeleteParams(thread_id=t)))
    both(
        lambda t: ThreadsAddUserMessageReq(
            params=ThreadAddUserMessageParams(thread_id=t, input=user_input("what is the PIN?"))
        )
    )

    bobs_threads = chatkit(http, BOB, ThreadsListReq(params=ThreadListParams(order="desc"))).json()
    assert bobs_threads["data"] == []
    alices_threads = chatkit(http, ALICE, ThreadsListReq(params=ThreadListParams(order="desc"))).json()
    assert [t["id"] for t in alices_threads["data"]] == [thread]
    items = chatkit(http, ALICE, ItemsListReq(params=ItemsListParams(thread_id=thread))).json()
    assert len(items["data"]) == 2 and SECRET in json.dumps(items)
    assert alices_threads["data"][0]["title"] == SECRET  # untouched by Bob's update


@pytest.mark.slow
def test_two_servers_sharing_postgresql_keep_each_owners_conversations(postgres_url: str, tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        f'database_url = "{postgres_url}"\ndata_dir = "{tmp_path}"\n[[models]]\nname = "echo"\nprovider = "fake"\n'
    )
    with parley_serve(config) as first, parley_serve(config) as second:
        one, two = httpx.Client(base_url=first, timeout=30), httpx.Client(base_url=second, timeout=30)
        with one, two:
            alices = say(one, ALICE, SECRET)["conversation_id"]
            # The second server has nothing of it in memory: its database reads filter by owner.
            assert two.get(f"/api/conversations/{alices}", headers=BOB).json() == not_found_body(alices)
            refused = two.post("/api/chat", json={"message": "PIN?", "conversation_id": alices}, headers=BOB)
            assert refused.status_code == 404 and refused.json() == not_found_body(alices)
            say(two, ALICE, "continued on the second", conversation_id=alices)
            # Both servers now hold Alice's history in memory; neither serves it to Bob.
            for server in (one, two):
                refused = server.post("/api/chat", json={"message": "PIN?", "conversation_id": alices}, headers=BOB)
                assert refused.status_code == 404 and refused.json() == not_found_body(alices)
            assert [c["id"] for c in two.get("/api/conversations", headers=BOB).json()["data"]] == []
            stored = one.get(f"/api/conversations/{alices}", headers=ALICE).json()
            assert [m["content"] for m in stored["messages"] if m["role"] == "user"] == [
                SECRET,
                "continued on the second",
            ]
