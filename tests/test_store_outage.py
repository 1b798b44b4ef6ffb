"""The database going away under a running server: 503 `store_unavailable`, a truthful /ready, self-repair."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parley.store import ConversationExists, ConversationNotFound, async_url, downgrade, open_store
from parley.store.errors import StoreUnavailable
from tests.support import ws
from tests.support.databases import drop_postgres_database
from tests.support.server import running_parley
from tests.support.upstream import closed_port

MODELS = [
    {"name": "echo", "provider": "fake"},
    # two characters every 20 ms: a reply of a long message is still streaming when the test acts
    {"name": "slow", "provider": "fake", "chunk_chars": 2, "delay_ms": 20},
]
HEAL_SECONDS = 30.0  # generous: the repair waits for no timer the first time, and at most 5 s after


def recreate_postgres_database(url: str) -> None:
    """Create the (dropped) database of `url` again, empty: what a restore to a new server looks like."""

    async def create() -> None:
        admin = create_async_engine(
            async_url(make_url(url).set(database="postgres")), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as connection:
                await connection.execute(text(f'CREATE DATABASE "{make_url(url).database}"'))
        finally:
            await admin.dispose()

    asyncio.run(create())


def assert_store_unavailable(reply: httpx.Response, url: str) -> None:
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == str(StoreUnavailable.RETRY_AFTER_SECONDS)
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "store_unavailable"), error
    assert_no_secrets(reply.text, url)


def assert_no_secrets(body: str, url: str) -> None:
    parsed = make_url(url)
    for secret in (str(parsed.database), str(parsed.host), str(parsed.port), "postgres", "asyncpg", "sqlite"):
        assert secret not in body, f"{secret!r} reached the client: {body}"


def wait_until_ready(base_url: str) -> httpx.Response:
    deadline = time.monotonic() + HEAL_SECONDS
    while (reply := httpx.get(f"{base_url}/ready")).status_code != 200:
        assert time.monotonic() < deadline, f"not ready again after {HEAL_SECONDS} s: {reply.text}"
        time.sleep(0.1)
    return reply


def chat(base_url: str, message: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/api/chat", json={"message": message, "stream": False, **fields}, timeout=30)


def test_a_dropped_postgres_database_is_a_503_everywhere_and_the_server_heals(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="parley.store")
    with running_parley(models=MODELS, database_url=postgres_url) as parley:
        kept = chat(parley, "remember me").json()["conversation_id"]
        asyncio.run(drop_postgres_database(postgres_url))

        assert_store_unavailable(chat(parley, "hello"), postgres_url)
        assert_store_unavailable(chat(parley, "hello", conversation_id=kept), postgres_url)
        streamed = httpx.post(f"{parley}/api/chat", json={"message": "hello"})
        assert_store_unavailable(streamed, postgres_url)
        conversations = f"{parley}/api/conversations"
        assert_store_unavailable(httpx.get(conversations), postgres_url)
        assert_store_unavailable(httpx.get(f"{conversations}/{kept}"), postgres_url)
        assert_store_unavailable(httpx.patch(f"{conversations}/{kept}", json={"title": "new"}), postgres_url)
        assert_store_unavailable(httpx.delete(f"{conversations}/{kept}"), postgres_url)
        assert_store_unavailable(httpx.get(f"{conversations}/{kept}/export"), postgres_url)
        assert_store_unavailable(httpx.get(f"{conversations}/{kept}/export?format=markdown"), postgres_url)

        with ws.socket(parley, ws.new_session()) as socket:
            frames = ws.chat(socket, "hello")
            ws.assert_error(frames[-1], "store_unavailable", "server_error")
            assert_no_secrets(json.dumps(frames), postgres_url)
            socket.send(json.dumps({"type": "ping"}))
            assert ws.receive(socket) == {"event": "pong"}, "the socket stays open"

        ready = httpx.get(f"{parley}/ready")
        assert ready.status_code == 503
        assert ready.json()["database"] == "database unreachable"
        assert "database unreachable" in ready.json()["reason"]
        assert_no_secrets(ready.text, postgres_url)
        assert httpx.get(f"{parley}/health").status_code == 200
        # The OpenAI API keeps no conversations: it still answers.
        completion = httpx.post(
            f"{parley}/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert completion.status_code == 200
        # The operator learns what happened, in the driver's words, from the log.
        logged = [r.getMessage() for r in caplog.records if r.name == "parley.store"]
        assert any("database unreachable" in line and "does not exist" in line for line in logged), logged

        recreate_postgres_database(postgres_url)
        assert wait_until_ready(parley).json()["database"] == "ok"
        reply = chat(parley, "back again")
        assert reply.status_code == 200, reply.text
        assert reply.json()["content"] == "back again"
        stored = httpx.get(f"{conversations}/{reply.json()['conversation_id']}").json()
        assert [(m["role"], m["content"], m["status"]) for m in stored["messages"]] == [
            ("user", "back again", "complete"),
            ("assistant", "back again", "complete"),
        ]
        assert httpx.get(f"{conversations}/{kept}").status_code == 404, "a new, empty database"


def test_a_reply_whose_database_is_dropped_mid_stream_ends_with_reply_not_saved(postgres_url: str) -> None:
    with running_parley(models=MODELS, database_url=postgres_url) as parley:
        events: list[tuple[str, dict[str, Any]]] = []
        body = {"message": "a reply long enough to be streaming still " * 10, "model": "slow"}
        with (
            httpx.Client(base_url=parley, timeout=30) as client,
            connect_sse(client, "POST", "/api/chat", json=body) as source,
        ):
            assert source.response.status_code == 200
            for event in source.iter_sse():
                events.append((event.event, json.loads(event.data)))
                if event.event == "text_delta" and len(events) == 3:
                    asyncio.run(drop_postgres_database(postgres_url))
        names = [name for name, _ in events]
        assert names[0] == "message_start" and "text_delta" in names
        assert "message_complete" not in names
        assert names[-1] == "error"
        assert events[-1][1]["code"] == "reply_not_saved"
        assert_no_secrets(json.dumps(events), postgres_url)


def test_sqlite_tables_lost_under_a_running_server_are_set_up_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data file emptied (its tables dropped by another program): the server builds its schema again."""
    caplog.set_level(logging.WARNING, logger="parley.store")
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    with running_parley(models=MODELS, database_url=url) as parley:
        assert chat(parley, "first").status_code == 200

        async def drop_tables() -> None:
            engine = create_async_engine(async_url(url), poolclass=NullPool)
            try:
                async with engine.begin() as connection:  # every table Parley made, children first
                    names = await connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
                    tables = sorted((name for (name,) in names), key=lambda table: table != "messages")
                    for table in tables:
                        await connection.execute(text(f"DROP TABLE {table}"))
            finally:
                await engine.dispose()

        asyncio.run(drop_tables())
        # The first request meets the missing schema (and starts the repair): later ones may find it back.
        assert_store_unavailable(httpx.get(f"{parley}/api/conversations"), url)
        assert wait_until_ready(parley).json()["database"] == "ok"
        reply = chat(parley, "second")
        assert reply.status_code == 200, reply.text
        listed = httpx.get(f"{parley}/api/conversations").json()["data"]
        assert [item["id"] for item in listed] == [reply.json()["conversation_id"]]
    logged = [r.getMessage() for r in caplog.records if r.name == "parley.store"]
    assert any("database schema missing" in line and "no such table" in line for line in logged), logged
    assert any("database schema set up again" in line for line in logged), logged
    # The driver's words only: no statements or their parameters (a user's text) in the log.
    assert not any("[SQL:" in line or "[parameters:" in line for line in logged), logged


async def test_a_sqlite_file_that_cannot_be_opened_is_store_unavailable(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'data' / 'parley.db'}")
    try:
        shutil.rmtree(tmp_path / "data")  # the store has no connection open yet: its next one fails
        with pytest.raises(StoreUnavailable) as raised:
            await store.list_conversations()
        assert raised.value.reason == "database unreachable"
        assert str(tmp_path) not in raised.value.message
        assert "unable to open database file" in (raised.value.detail or "")
        assert await store.readiness() == "database unreachable"
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_a_postgres_server_that_refuses_connections_is_store_unavailable() -> None:
    store = await open_store(f"postgresql://postgres@127.0.0.1:{closed_port()}/parley", run_migrations=False)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.create_conversation("hello")
        assert (raised.value.status_code, raised.value.reason) == (503, "database unreachable")
        assert "127.0.0.1" not in raised.value.message and "127.0.0.1" in (raised.value.detail or "")
        assert await store.readiness() == "database unreachable"
    finally:
        await store.aclose()


async def test_a_schema_behind_is_reported_and_migrated_forward(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        assert await store.readiness() is None
        await downgrade(database_url, "-1")  # an older release's schema, as if restored from an old dump
        assert await store.readiness() == "database schema behind"
        deadline = time.monotonic() + HEAL_SECONDS
        while (state := await store.readiness()) is not None:
            assert time.monotonic() < deadline, f"schema not repaired after {HEAL_SECONDS} s: {state}"
            await asyncio.sleep(0.1)
        conversation = await store.create_conversation("after the repair")
        assert (await store.get_conversation(conversation.id)).title == "after the repair"
    finally:
        await store.stop_repairs()
        await store.aclose()


async def test_integrity_and_domain_errors_are_not_outages(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        await store.create_conversation(conversation_id="conv_taken")
        with pytest.raises(ConversationExists):
            await store.create_conversation(conversation_id="conv_taken")
        with pytest.raises(ConversationNotFound):
            await store.get_conversation("conv_absent")
        assert await store.readiness() is None
    finally:
        await store.aclose()
