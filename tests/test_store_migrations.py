"""Schema migrations, on SQLite and PostgreSQL: from empty, from the previous revision, and racing."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, bindparam, inspect, text

from parley.store import create_engine, current_revision, downgrade, head_revision, migrate, open_store
from parley.store.migrator import MIGRATIONS_DIR, VERSION_TABLE
from parley.store.schema import Base, UTCDateTime

pytest_plugins = ["tests.support.databases"]

PREVIOUS = "0001"
STARTED = datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)


async def _schema_drift(url: str) -> list[Any]:
    """What the database lacks or has beyond the ORM's tables (empty: they agree)."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, "compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})
    finally:
        await engine.dispose()


def test_the_migrations_ship_inside_the_package() -> None:
    assert MIGRATIONS_DIR.parent.name == "store" and MIGRATIONS_DIR.parent.parent.name == "parley"
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert head_revision() == "0009"


async def test_migrate_builds_the_schema_from_empty(database_url: str) -> None:
    assert await current_revision(database_url) is None

    await migrate(database_url)

    assert await current_revision(database_url) == head_revision()
    assert await _schema_drift(database_url) == []
    store = await open_store(database_url)  # migrating again on open is a no-op
    try:
        conversation = await store.create_conversation("works")
        assert (await store.get_conversation(conversation.id)).title == "works"
    finally:
        await store.aclose()


async def test_upgrading_from_the_previous_revision_keeps_every_row(database_url: str) -> None:
    await migrate(database_url, PREVIOUS)
    assert await current_revision(database_url) == PREVIOUS
    assert "error" not in await _columns(database_url, "messages")
    # Rows as the previous release wrote them: a finished exchange and a reply still streaming.
    engine = create_engine(database_url)
    insert_message = text(
        "INSERT INTO messages (id, conversation_id, position, role, content, model, prompt_tokens, status, created_at)"
        " VALUES (:id, 'conv_old', :position, :role, :content, :model, :tokens, :status, :at)"
    ).bindparams(bindparam("at", type_=UTCDateTime()))
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO conversations (id, title, model, message_count, created_at, updated_at)"
                " VALUES ('conv_old', 'Old chat', 'smollm2', 3, :at, :at)"
            ).bindparams(bindparam("at", type_=UTCDateTime())),
            {"at": STARTED},
        )
        for position, role, content, status in (
            (0, "user", "Hello from the old version", "complete"),
            (1, "assistant", "Hi!", "complete"),
            (2, "assistant", "", "streaming"),
        ):
            await connection.execute(
                insert_message,
                {
                    "id": f"msg_old_{position}",
                    "position": position,
                    "role": role,
                    "content": content,
                    "model": "smollm2",
                    "tokens": 9 if role == "assistant" else None,
                    "status": status,
                    "at": STARTED,
                },
            )
    await engine.dispose()

    await migrate(database_url)

    assert await current_revision(database_url) == head_revision()
    assert await _schema_drift(database_url) == []
    store = await open_store(database_url)
    try:
        old = await store.get_conversation("conv_old")
        assert (old.title, old.model, old.message_count, old.created_at) == ("Old chat", "smollm2", 3, STARTED)
        assert [(m.id, m.position, m.role, m.content, m.status, m.error) for m in old.messages] == [
            ("msg_old_0", 0, "user", "Hello from the old version", "complete", None),
            ("msg_old_1", 1, "assistant", "Hi!", "complete", None),
            ("msg_old_2", 2, "assistant", "", "streaming", None),
        ]
        assert old.messages[1].prompt_tokens == 9
        assert all(m.created_at == STARTED for m in old.messages)
        # The new revision's column works on old rows, and the conversation carries on.
        assert await store.fail_interrupted() == 1
        assert (await store.get_conversation("conv_old")).messages[2].error is not None
        await store.append_message("conv_old", "user", "And from the new one")
        assert [m.position for m in (await store.get_conversation("conv_old")).messages] == [0, 1, 2, 3]
    finally:
        await store.aclose()


async def test_downgrading_one_revision_and_upgrading_again_keeps_messages(database_url: str) -> None:
    store = await open_store(database_url)
    conversation = await store.create_conversation()
    reply = await store.start_assistant_message(conversation.id)
    await store.finish_message(reply, content="half", status="failed", error="boom")
    await store.aclose()

    await downgrade(database_url, PREVIOUS)
    assert await current_revision(database_url) == PREVIOUS
    assert "error" not in await _columns(database_url, "messages")
    await migrate(database_url)

    store = await open_store(database_url)
    try:
        message = (await store.get_conversation(conversation.id)).messages[0]
        assert (message.content, message.status, message.error) == ("half", "failed", None)
    finally:
        await store.aclose()
    assert await _schema_drift(database_url) == []


# Each child waits for the same moment, so their migrations really overlap.
_SERVER_START = """
import asyncio, sys, time
from parley.store import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
asyncio.run(migrate(sys.argv[1]))
"""


async def test_servers_starting_together_migrate_once_without_error(database_url: str) -> None:
    start_at = str(time.time() + 3)
    servers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SERVER_START, database_url, start_at, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = [await asyncio.wait_for(server.communicate(), 60) for server in servers]

    assert [(server.returncode, err.decode()[-2000:]) for server, (_, err) in zip(servers, results, strict=True)] == [
        (0, "")
    ] * 3
    assert await current_revision(database_url) == head_revision()
    assert await _schema_drift(database_url) == []


async def test_migrations_in_one_process_take_turns(database_url: str, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    await asyncio.gather(*(migrate(url) for url in (database_url, other, database_url, other)))

    for url in (database_url, other):
        assert await current_revision(url) == head_revision()
        assert await _schema_drift(url) == []
