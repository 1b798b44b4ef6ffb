"""Conversations that persist: memory in /api/chat, the conversation API, restarts, several servers.

The same suite runs over SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream


def models(upstream: Upstream) -> list[dict[str, Any]]:
    v1 = upstream.base_url + "/v1"
    return [
        {"name": "remote", "provider": "openai", "base_url": v1, "model": "text"},
        {"name": "failing", "provider": "openai", "base_url": v1, "model": "error-mid"},
        {"name": "slow", "provider": "fake", "replies": ["tick " * 400], "chunk_chars": 5, "delay_ms": 10},
        {"name": "small", "provider": "openai", "base_url": v1, "model": "text", "context_size": 120},
    ]


@contextlib.contextmanager
def parley(upstream: Upstream, database_url: str) -> Iterator[httpx.Client]:
    with running_parley(models=models(upstream), database_url=database_url) as url, httpx.Client(base_url=url) as http:
        yield http


def say(http: httpx.Client, message: str, **fields: Any) -> dict[str, Any]:
    reply = http.post("/api/chat", json={"message": message, "stream": False, **fields})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def sent_messages(upstream: Upstream, marker: str) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in upstream.find(marker).body["messages"]]


def wait_for_status(http: httpx.Client, conversation_id: str, message_id: str) -> dict[str, Any]:
    """A reply is saved when its run closes, just after the client's stream ends."""
    deadline = time.monotonic() + 15
    while True:
        messages = http.get(f"/api/conversations/{conversation_id}").json()["messages"]
        (message,) = [m for m in messages if m["id"] == message_id]
        if message["status"] != "streaming" or time.monotonic() > deadline:
            result: dict[str, Any] = message
            return result
        time.sleep(0.02)


def test_the_model_sees_the_earlier_turns(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        first = say(http, "memory-1: my name is Ada")
        assert first["conversation_id"].startswith("conv_") and first["message_id"].startswith("msg_")
        second = say(http, "memory-2: what is my name?", conversation_id=first["conversation_id"])
        assert second["conversation_id"] == first["conversation_id"]
        assert sent_messages(upstream, "memory-2") == [
            ("user", "memory-1: my name is Ada"),
            ("assistant", TEXT_REPLY),
            ("user", "memory-2: what is my name?"),
        ]
        other = say(http, "memory-3: a new conversation")
        assert other["conversation_id"] != first["conversation_id"]
        assert sent_messages(upstream, "memory-3") == [("user", "memory-3: a new conversation")]


def test_streamed_turn_says_its_ids_and_is_stored(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        with connect_sse(http, "POST", "/api/chat", json={"message": "stream-1: hello"}) as source:
            events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
        start = events[0][1]
        assert (start["truncated"], start["truncated_messages"]) == (False, 0)
        stored = http.get(f"/api/conversations/{start['conversation_id']}").json()
        assert stored["title"] == "stream-1: hello"
        user, reply = stored["messages"]
        assert (user["role"], user["content"]) == ("user", "stream-1: hello")
        assert reply["id"] == start["message_id"]
        assert (reply["content"], reply["status"], reply["finish_reason"]) == (TEXT_REPLY, "complete", "stop")
        assert reply["model"] == "remote"
        assert reply["usage"]["completion_tokens"] == 5
        assert reply["time_to_first_token_ms"] is not None


def test_openai_api_stays_stateless(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        reply = http.post(
            "/v1/chat/completions", json={"model": "remote", "messages": [{"role": "user", "content": "stateless"}]}
        )
        assert reply.status_code == 200
        assert http.get("/api/conversations").json()["data"] == []


def test_list_rename_paginate_delete_export(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        ids = [say(http, f"list-{n}: topic {n}")["conversation_id"] for n in range(3)]
        say(http, "list-0 again", conversation_id=ids[0])  # now the most recent activity
        listed = http.get("/api/conversations").json()
        assert [c["id"] for c in listed["data"]] == [ids[0], ids[2], ids[1]]
        assert listed["data"][0]["title"] == "list-0: topic 0"
        assert listed["data"][0]["message_count"] == 4
        assert listed["next_cursor"] is None

        page = http.get("/api/conversations", params={"limit": 2}).json()
        assert [c["id"] for c in page["data"]] == [ids[0], ids[2]]
        rest = http.get("/api/conversations", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [c["id"] for c in rest["data"]] == [ids[1]]
        assert rest["next_cursor"] is None

        renamed = http.patch(f"/api/conversations/{ids[1]}", json={"title": "Renamed"})
        assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
        assert http.get(f"/api/conversations/{ids[1]}").json()["title"] == "Renamed"

        exported = http.get(f"/api/conversations/{ids[0]}/export")
        assert "attachment" in exported.headers["content-disposition"]
        document = exported.json()
        assert [m["content"] for m in document["messages"]] == [
            "list-0: topic 0",
            TEXT_REPLY,
            "list-0 again",
            TEXT_REPLY,
        ]
        markdown = http.get(f"/api/conversations/{ids[0]}/export", params={"format": "markdown"})
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert "list-0: topic 0" in markdown.text and TEXT_REPLY in markdown.text

        assert http.delete(f"/api/conversations/{ids[2]}").status_code == 204
        gone = http.get(f"/api/conversations/{ids[2]}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "conversation_not_found"
        assert [c["id"] for c in http.get("/api/conversations").json()["data"]] == [ids[0], ids[1]]


def test_bad_conversation_requests_are_4xx(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        conversation = say(http, "bad-1")["conversation_id"]
        for reply in (
            http.get("/api/conversations/conv_nope"),
            http.patch("/api/conversations/conv_nope", json={"title": "x"}),
            http.delete("/api/conversations/conv_nope"),
            http.get("/api/conversations/conv_nope/export"),
        ):
            assert reply.status_code == 404
            assert reply.json()["error"]["code"] == "conversation_not_found"
        for reply in (
            http.patch(f"/api/conversations/{conversation}", json={"title": ""}),
            http.patch(f"/api/conversations/{conversation}", json={"name": "x"}),
            http.get("/api/conversations", params={"limit": 0}),
            http.get("/api/conversations", params={"cursor": "garbage"}),
            http.get(f"/api/conversations/{conversation}/export", params={"format": "pdf"}),
            http.post("/api/chat", json={"message": "x", "conversation_id": "bad id with spaces"}),
        ):
            assert 400 <= reply.status_code < 500, reply.text
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        # nothing a user wrote was lost by the bad requests
        assert [m["content"] for m in http.get(f"/api/conversations/{conversation}").json()["messages"]] == [
            "bad-1",
            TEXT_REPLY,
        ]


def test_cancelled_reply_is_saved_with_what_was_produced(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        with connect_sse(
            http, "POST", "/api/chat", json={"message": "cancel me", "model": "slow", "on_disconnect": "cancel"}
        ) as source:
            events = source.iter_sse()
            start = json.loads(next(events).data)
            for _ in range(3):
                assert next(events).event == "text_delta"
        reply = wait_for_status(http, start["conversation_id"], start["message_id"])
        assert reply["status"] == "cancelled"
        assert reply["content"].startswith("tick tick")
        assert len(reply["content"]) < len("tick " * 400)
        # the partial reply is part of the history the model sees next
        say(http, "after-cancel: go on", conversation_id=start["conversation_id"])
        history = sent_messages(upstream, "after-cancel")
        assert history[1][0] == "assistant" and history[1][1].startswith("tick tick")


def test_failed_reply_is_saved_with_its_error(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        with connect_sse(http, "POST", "/api/chat", json={"message": "fail me", "model": "failing"}) as source:
            events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
        assert events[-1][0] == "error"
        start = events[0][1]
        reply = wait_for_status(http, start["conversation_id"], start["message_id"])
        assert (reply["status"], reply["content"]) == ("failed", "Partial")
        assert reply["error"] == "the upstream failed during the reply"  # Parley's words, not the upstream's


def test_history_is_fitted_to_a_small_context(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        conversation = None
        starts = []
        for turn in range(6):
            message = f"fit-{turn}: " + "words " * 30
            fields = {"model": "small", "stream": False} | ({"conversation_id": conversation} if conversation else {})
            body = http.post("/api/chat", json={"message": message, **fields}).json()
            conversation = body["conversation_id"]
            starts.append((body["truncated"], body["truncated_messages"]))
        assert starts[0] == (False, 0)
        assert starts[-1][0] is True and starts[-1][1] > 0
        sent = sent_messages(upstream, "fit-5")
        assert sent[-1][1].startswith("fit-5")
        assert sent[0][0] == "user", "a kept history starts at a user turn"
        assert len(sent) == 2 * 6 - 1 - starts[-1][1]


def test_conversations_survive_a_restart(upstream: Upstream, database_url: str) -> None:
    with parley(upstream, database_url) as http:
        conversation = say(http, "restart-1: remember this")["conversation_id"]
    with parley(upstream, database_url) as http:
        stored = http.get(f"/api/conversations/{conversation}").json()
        assert [m["content"] for m in stored["messages"]] == ["restart-1: remember this", TEXT_REPLY]
        say(http, "restart-2: still there?", conversation_id=conversation)
        assert sent_messages(upstream, "restart-2")[0] == ("user", "restart-1: remember this")


def test_two_servers_share_conversations(upstream: Upstream, postgres_url: str) -> None:
    with parley(upstream, postgres_url) as first, parley(upstream, postgres_url) as second:
        assert first.base_url != second.base_url
        conversation = say(first, "shared-1: started on the first server")["conversation_id"]
        say(second, "shared-2: continued on the second", conversation_id=conversation)
        assert sent_messages(upstream, "shared-2")[0] == ("user", "shared-1: started on the first server")
        listed = first.get(f"/api/conversations/{conversation}").json()
        assert listed["message_count"] == 4
