"""A turn's history read from the database (nothing kept in process yet): what the model sees."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from parley.models.base import ChatMessage, FunctionCall, ToolCall
from parley.store import ConversationStore, open_store

ADD_CALL = ToolCall(id="call_7", function=FunctionCall(name="calculator", arguments='{"expression": "6*7"}'))


async def test_a_window_read_from_the_database_keeps_tool_calls_and_agent_steps(store: ConversationStore) -> None:
    first = await store.open_turn("agentic", "What is 6x7?", owner="alice")
    steps = [
        ChatMessage(role="assistant", content="", tool_calls=[ADD_CALL]),
        ChatMessage(role="tool", content="42", tool_call_id="call_7"),
    ]
    await store.finish_reply(first.reply_id, "agentic", content="It is 42.", steps=steps)
    second = await store.open_turn("agentic", "And the weather?", owner="alice")
    await store.finish_reply(second.reply_id, "agentic", content="", tool_calls=[ADD_CALL], status="complete")

    fresh = ConversationStore(store.engine)  # a restarted server: nothing kept yet
    window = await fresh.turn_history("agentic", 50, owner="alice")

    assert window.messages == await store.history("agentic")
    assert [(m.role, m.text()) for m in window.messages] == [
        ("user", "What is 6x7?"),
        ("assistant", ""),
        ("tool", "42"),
        ("assistant", "It is 42."),
        ("user", "And the weather?"),
        ("assistant", ""),
    ]
    assert window.messages[1].tool_calls == [ADD_CALL] and window.messages[5].tool_calls == [ADD_CALL]
    assert window.next_position == 4
    assert (await ConversationStore(store.engine).turn_history("agentic", 2)).messages == window.messages[-2:]


async def test_a_history_read_beside_an_open_write_sees_what_was_committed(tmp_path: Path) -> None:
    """Another program (or this server's writer) holds SQLite's write lock mid-transaction: a turn's
    history still reads at once, and shows only what was committed."""
    path = tmp_path / "parley.db"
    store = await open_store(f"sqlite:///{path}")
    writing = sqlite3.connect(path, isolation_level=None)
    try:
        opened = await store.open_turn("busy", "one")
        await store.finish_reply(opened.reply_id, "busy", content="uno")
        writing.execute("BEGIN IMMEDIATE")
        writing.execute(
            "INSERT INTO messages (id, conversation_id, position, role, content, status, created_at) "
            "VALUES ('msg_pending', 'busy', 2, 'user', 'not yet', 'complete', '2026-01-01 00:00:00.000000')"
        )
        writing.execute("UPDATE conversations SET message_count = 3 WHERE id = 'busy'")

        fresh = ConversationStore(store.engine)  # nothing kept: read from the database
        window = await asyncio.wait_for(fresh.turn_history("busy", 50), timeout=5)

        assert [m.content for m in window.messages] == ["one", "uno"]
        assert window.next_position == 2
    finally:
        writing.rollback()
        writing.close()
        await store.aclose()
