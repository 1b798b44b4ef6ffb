"""The conversation store, run on SQLite and on PostgreSQL (each test once per database)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from parley.chat.run import Timing
from parley.events import Usage
from parley.models.base import FunctionCall, ToolCall
from parley.store import (
    ConversationExists,
    ConversationNotFound,
    ConversationStore,
    InvalidStoreInput,
    MessageNotFound,
    MessageNotStreaming,
    open_store,
)

pytest_plugins = ["tests.support.databases"]

WEATHER_CALL = ToolCall(id="call_1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))


async def _count(store: ConversationStore, sql: str, **params: str) -> int:
    async with store.engine.connect() as connection:
        value = await connection.scalar(text(sql), params)
    assert isinstance(value, int)
    return value


# --- conversations ----------------------------------------------------------------------------


async def test_a_new_conversation_is_empty_untitled_and_listed(store: ConversationStore) -> None:
    before = datetime.now(UTC)
    created = await store.create_conversation(model="smollm2", agent="helper")

    assert created.id.startswith("conv_")
    assert (created.title, created.model, created.agent, created.message_count) == (None, "smollm2", "helper", 0)
    assert before - timedelta(seconds=5) <= created.created_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert created.created_at.tzinfo is not None
    loaded = await store.get_conversation(created.id)
    assert loaded.messages == ()
    assert loaded.created_at == created.created_at
    assert [c.id for c in (await store.list_conversations()).items] == [created.id]


async def test_a_conversation_can_be_created_with_its_own_id_once(store: ConversationStore) -> None:
    await store.create_conversation("Trip plans", conversation_id="client-chosen_id.1")
    with pytest.raises(ConversationExists):
        await store.create_conversation("Another", conversation_id="client-chosen_id.1")
    assert (await store.get_conversation("client-chosen_id.1")).title == "Trip plans"


@pytest.mark.parametrize("bad_id", ["", "has space", "slash/in/it", "-leading-dash", "x" * 129, "naïve"])
async def test_ids_that_do_not_fit_urls_or_columns_are_refused(store: ConversationStore, bad_id: str) -> None:
    with pytest.raises(InvalidStoreInput):
        await store.create_conversation(conversation_id=bad_id)
    with pytest.raises(InvalidStoreInput):
        await store.get_or_create(bad_id)
    assert (await store.list_conversations()).items == []


async def test_get_or_create_returns_the_existing_conversation_or_a_new_one(store: ConversationStore) -> None:
    existing = await store.create_conversation("Kept", model="a")
    await store.append_message(existing.id, "user", "hello")

    again = await store.get_or_create(existing.id, model="b")
    assert (again.title, again.model, again.message_count) == ("Kept", "a", 1)

    fresh = await store.get_or_create("conv_from_client", model="b", agent="helper")
    assert (fresh.id, fresh.model, fresh.agent, fresh.message_count) == ("conv_from_client", "b", "helper", 0)
    assert {c.id for c in (await store.list_conversations()).items} == {existing.id, "conv_from_client"}


async def test_get_or_create_racing_itself_makes_one_conversation(store: ConversationStore) -> None:
    results = await asyncio.gather(*(store.get_or_create("conv_race") for _ in range(8)))
    assert {r.id for r in results} == {"conv_race"}
    assert len({r.created_at for r in results}) == 1
    assert len((await store.list_conversations()).items) == 1


async def test_rename_sets_a_trimmed_title(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    renamed = await store.rename(conversation.id, "  Holiday\n plans  ")
    assert renamed.title == "Holiday plans"
    assert (await store.get_conversation(conversation.id)).title == "Holiday plans"
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(InvalidStoreInput):
            await store.rename(conversation.id, bad)
    assert (await store.get_conversation(conversation.id)).title == "Holiday plans"


async def test_unknown_ids_raise_not_found_errors(store: ConversationStore) -> None:
    for call in (
        store.get_conversation("conv_missing"),
        store.history("conv_missing"),
        store.rename("conv_missing", "x"),
        store.delete("conv_missing"),
        store.export_json("conv_missing"),
        store.export_markdown("conv_missing"),
        store.append_message("conv_missing", "user", "hi"),
        store.start_assistant_message("conv_missing"),
    ):
        with pytest.raises(ConversationNotFound) as raised:
            await call
        assert raised.value.status_code == 404
    with pytest.raises(MessageNotFound):
        await store.finish_message("msg_missing", content="x")
    assert await _count(store, "SELECT count(*) FROM messages") == 0
    assert (await store.list_conversations()).items == []


# --- messages ---------------------------------------------------------------------------------


async def test_messages_come_back_in_order_with_everything_stored(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    await store.append_message(conversation.id, "system", "Be brief.")
    user_id = await store.append_message(conversation.id, "user", "Weather in Oslo? ☔ 日本語")
    await store.append_message(
        conversation.id,
        "assistant",
        "",
        reasoning="Need the weather tool.",
        tool_calls=[WEATHER_CALL],
        model="smollm2",
        agent="helper",
    )
    await store.append_message(conversation.id, "tool", '{"temp": 3}', tool_call_id="call_1")
    await store.append_message(conversation.id, "assistant", "3 °C and rain.", model="smollm2")

    loaded = await store.get_conversation(conversation.id)
    assert [(m.position, m.role) for m in loaded.messages] == [
        (0, "system"),
        (1, "user"),
        (2, "assistant"),
        (3, "tool"),
        (4, "assistant"),
    ]
    assert loaded.message_count == 5
    user, call = loaded.messages[1], loaded.messages[2]
    assert (user.id, user.content, user.status) == (user_id, "Weather in Oslo? ☔ 日本語", "complete")
    assert call.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert (call.reasoning, call.model, call.agent) == ("Need the weather tool.", "smollm2", "helper")
    assert loaded.messages[3].tool_call_id == "call_1"
    assert [m.created_at for m in loaded.messages] == sorted(m.created_at for m in loaded.messages)


async def test_the_first_user_message_titles_the_conversation(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    await store.append_message(conversation.id, "system", "You are a helpful assistant.")
    assert (await store.get_conversation(conversation.id)).title is None

    long_message = "  Could you   help me plan\na week-long trip through the fjords of western Norway in May?  "
    await store.append_message(conversation.id, "user", long_message)
    await store.append_message(conversation.id, "user", "A different second question")
    title = (await store.get_conversation(conversation.id)).title

    assert title == "Could you help me plan a week-long trip through the fjords…"
    assert len(title) <= 60
    short = await store.create_conversation()
    await store.append_message(short.id, "user", "  Hi there  ")
    assert (await store.get_conversation(short.id)).title == "Hi there"


async def test_a_given_title_is_not_replaced_by_the_first_message(store: ConversationStore) -> None:
    conversation = await store.create_conversation("My title")
    await store.append_message(conversation.id, "user", "Something else entirely")
    assert (await store.get_conversation(conversation.id)).title == "My title"


async def test_a_streamed_reply_is_saved_with_usage_timing_and_status(store: ConversationStore) -> None:
    conversation = await store.create_conversation(model="first")
    await store.append_message(conversation.id, "user", "Hello")
    reply_id = await store.start_assistant_message(
        conversation.id, model="smollm2", agent="helper", message_id="msg_chosen_by_the_api"
    )
    assert reply_id == "msg_chosen_by_the_api"

    during = await store.get_conversation(conversation.id)
    assert (during.messages[-1].status, during.messages[-1].content) == ("streaming", "")
    assert (during.model, during.agent) == ("smollm2", "helper")

    finished = await store.finish_message(
        reply_id,
        content="Hi! How can I help?",
        reasoning="Greet back.",
        usage=Usage(prompt_tokens=12, completion_tokens=7),
        timing=Timing(time_to_first_token_ms=41.5, total_ms=230.25, tokens_per_second=30.0),
        finish_reason="stop",
    )
    assert finished.position == 1
    stored = (await store.get_conversation(conversation.id)).messages[-1]
    assert stored == finished
    assert (stored.status, stored.content, stored.reasoning) == ("complete", "Hi! How can I help?", "Greet back.")
    assert (stored.prompt_tokens, stored.completion_tokens) == (12, 7)
    assert (stored.time_to_first_token_ms, stored.total_ms, stored.finish_reason) == (41.5, 230.25, "stop")
    assert (stored.model, stored.agent, stored.error) == ("smollm2", "helper", None)


async def test_cancelled_and_failed_replies_keep_what_was_produced(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    await store.append_message(conversation.id, "user", "Tell me a long story")
    cancelled = await store.start_assistant_message(conversation.id, model="m")
    await store.finish_message(cancelled, content="Once upon a", status="cancelled", finish_reason="cancelled")
    await store.append_message(conversation.id, "user", "Try again")
    failed = await store.start_assistant_message(conversation.id, model="m")
    await store.finish_message(
        failed,
        content="Once upon a time there",
        reasoning="thinking…",
        status="failed",
        finish_reason="error",
        error="upstream_error: connection reset",
    )

    messages = (await store.get_conversation(conversation.id)).messages
    assert [(m.status, m.content) for m in messages[1::2]] == [
        ("cancelled", "Once upon a"),
        ("failed", "Once upon a time there"),
    ]
    assert messages[3].error == "upstream_error: connection reset"
    assert messages[3].reasoning == "thinking…"


async def test_a_reply_is_finished_once_and_the_first_outcome_stands(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    reply = await store.start_assistant_message(conversation.id)
    await store.finish_message(reply, content="partial", status="cancelled")
    with pytest.raises(MessageNotStreaming):
        await store.finish_message(reply, content="something else", status="complete")
    with pytest.raises(InvalidStoreInput):
        await store.finish_message(reply, content="x", status="streaming")  # type: ignore[arg-type]
    stored = (await store.get_conversation(conversation.id)).messages[0]
    assert (stored.status, stored.content) == ("cancelled", "partial")


async def test_activity_moves_a_conversation_to_the_top(store: ConversationStore) -> None:
    older = await store.create_conversation("older")
    newer = await store.create_conversation("newer")
    assert [c.title for c in (await store.list_conversations()).items] == ["newer", "older"]

    reply = await store.start_assistant_message(older.id)
    page = (await store.list_conversations()).items
    assert [c.title for c in page] == ["older", "newer"]
    assert page[0].message_count == 1
    assert page[0].updated_at > newer.updated_at

    await store.append_message(newer.id, "user", "bump")
    assert [c.title for c in (await store.list_conversations()).items] == ["newer", "older"]
    await store.finish_message(reply, content="done")  # finishing a reply is activity too
    assert [c.title for c in (await store.list_conversations()).items] == ["older", "newer"]


async def test_pages_walk_every_conversation_once_newest_first(store: ConversationStore) -> None:
    created = [(await store.create_conversation(f"c{i}")).id for i in range(7)]

    first = await store.list_conversations(limit=3)
    await store.create_conversation("arrived while paging")  # must not shift the later pages
    second = await store.list_conversations(limit=3, cursor=first.next_cursor)
    third = await store.list_conversations(limit=3, cursor=second.next_cursor)

    seen = [c.id for page in (first, second, third) for c in page.items]
    assert seen == created[::-1]
    assert [len(p.items) for p in (first, second, third)] == [3, 3, 1]
    assert third.next_cursor is None
    exact = await store.list_conversations(limit=8)
    assert (len(exact.items), exact.next_cursor) == (8, None)


@pytest.mark.parametrize("cursor", ["garbage", "", "Zm9vfGJhcg", "MjAyNC0wMS0wMXxiYWQgaWQ"])
async def test_a_bad_cursor_or_limit_is_refused(store: ConversationStore, cursor: str) -> None:
    with pytest.raises(InvalidStoreInput):
        await store.list_conversations(cursor=cursor)
    for limit in (0, 201):
        with pytest.raises(InvalidStoreInput):
            await store.list_conversations(limit=limit)


async def test_delete_removes_the_conversation_and_its_messages_only(store: ConversationStore) -> None:
    doomed = await store.create_conversation()
    kept = await store.create_conversation()
    for conversation in (doomed, kept):
        await store.append_message(conversation.id, "user", "hello")
        reply = await store.start_assistant_message(conversation.id)
        await store.finish_message(reply, content="hi")

    await store.delete(doomed.id)

    with pytest.raises(ConversationNotFound):
        await store.get_conversation(doomed.id)
    assert await _count(store, "SELECT count(*) FROM messages WHERE conversation_id = :id", id=doomed.id) == 0
    assert len((await store.get_conversation(kept.id)).messages) == 2
    assert [c.id for c in (await store.list_conversations()).items] == [kept.id]
    with pytest.raises(ConversationNotFound):
        await store.delete(doomed.id)


async def test_history_holds_what_the_model_should_see(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    await store.append_message(conversation.id, "system", "Be brief.")
    await store.append_message(conversation.id, "user", "Weather?")
    await store.append_message(conversation.id, "assistant", "", tool_calls=[WEATHER_CALL], reasoning="hmm")
    await store.append_message(conversation.id, "tool", "3 °C", tool_call_id="call_1")
    cancelled = await store.start_assistant_message(conversation.id)
    await store.finish_message(cancelled, content="It is 3", tool_calls=[WEATHER_CALL], status="cancelled")
    await store.append_message(conversation.id, "user", "Go on")
    failed = await store.start_assistant_message(conversation.id)
    await store.finish_message(failed, content="It", status="failed", error="boom")
    empty = await store.start_assistant_message(conversation.id)
    await store.finish_message(empty, content="", status="cancelled")
    await store.start_assistant_message(conversation.id)  # still streaming

    history = await store.history(conversation.id)

    assert [(m.role, m.text()) for m in history] == [
        ("system", "Be brief."),
        ("user", "Weather?"),
        ("assistant", ""),
        ("tool", "3 °C"),
        ("assistant", "It is 3"),
        ("user", "Go on"),
    ]
    assert history[2].tool_calls == [WEATHER_CALL]
    assert history[2].reasoning_content is None
    assert history[3].tool_call_id == "call_1"
    assert history[4].tool_calls is None  # a cut-short reply's calls never ran
    assert await store.history((await store.create_conversation()).id) == []


async def test_fail_interrupted_marks_replies_left_streaming(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    left = await store.start_assistant_message(conversation.id)

    assert await store.fail_interrupted(older_than=timedelta(hours=1)) == 0
    assert await store.fail_interrupted() == 1

    stored = (await store.get_conversation(conversation.id)).messages[0]
    assert (stored.id, stored.status, stored.finish_reason) == (left, "failed", "error")
    assert stored.error is not None and "interrupted" in stored.error
    assert await store.fail_interrupted() == 0


# --- export -----------------------------------------------------------------------------------


async def _sample(store: ConversationStore) -> str:
    conversation = await store.create_conversation(model="smollm2")
    await store.append_message(conversation.id, "user", "Show me a code block")
    await store.append_message(
        conversation.id, "assistant", "```python\nprint('hi')\n```", reasoning="Easy.", model="smollm2"
    )
    await store.append_message(conversation.id, "assistant", "", tool_calls=[WEATHER_CALL], model="smollm2")
    await store.append_message(conversation.id, "tool", "Result with ``` fences", tool_call_id="call_1")
    reply = await store.start_assistant_message(conversation.id, model="smollm2")
    await store.finish_message(reply, content="Half a", status="failed", error="upstream timed out")
    return conversation.id


async def test_export_json_has_everything_and_round_trips_through_json(store: ConversationStore) -> None:
    conversation_id = await _sample(store)
    exported = await store.export_json(conversation_id)

    decoded = json.loads(json.dumps(exported))
    assert decoded == exported
    assert exported["format"] == "parley.conversation/1"
    assert (exported["id"], exported["title"], exported["message_count"]) == (
        conversation_id,
        "Show me a code block",
        5,
    )
    datetime.fromisoformat(exported["created_at"])
    messages = exported["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant", "tool", "assistant"]
    assert messages[1]["reasoning"] == "Easy."
    assert messages[2]["tool_calls"][0]["function"]["name"] == "weather"
    assert (messages[4]["status"], messages[4]["error"], messages[4]["content"]) == (
        "failed",
        "upstream timed out",
        "Half a",
    )


async def test_export_markdown_reads_as_a_transcript(store: ConversationStore) -> None:
    conversation_id = await _sample(store)
    markdown = await store.export_markdown(conversation_id)

    assert markdown.startswith("# Show me a code block\n")
    assert f"`{conversation_id}`" in markdown
    assert markdown.index("## User") < markdown.index("## Assistant · smollm2")
    assert "```python\nprint('hi')\n```" in markdown
    assert "<details><summary>Reasoning</summary>\n\nEasy.\n\n</details>" in markdown
    assert '**Tool call** `weather` (`call_1`):\n\n```json\n{\n  "city": "Oslo"\n}\n```' in markdown
    # A tool result holding ``` gets a longer fence, so it can't end its own block early.
    assert "## Tool result (`call_1`)\n\n````\nResult with ``` fences\n````" in markdown
    assert "The reply failed: upstream timed out" in markdown
    assert markdown.endswith("\n") and "\n\n\n" not in markdown


# --- bad input never costs stored data --------------------------------------------------------


async def test_bad_input_is_refused_and_changes_nothing(store: ConversationStore) -> None:
    conversation = await store.create_conversation("Keep me")
    await store.append_message(conversation.id, "user", "first")
    before = await store.get_conversation(conversation.id)

    with pytest.raises(InvalidStoreInput):
        await store.append_message(conversation.id, "robot", "hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidStoreInput):
        await store.append_message(conversation.id, "assistant", "x", tool_calls=[{"id": object()}])
    with pytest.raises(InvalidStoreInput):
        await store.append_message(conversation.id, "assistant", "x", model="m" * 129)
    with pytest.raises(InvalidStoreInput):
        await store.append_message(conversation.id, "user", "x", message_id="bad id")
    duplicate = before.messages[0].id
    with pytest.raises(InvalidStoreInput):
        await store.append_message(conversation.id, "user", "x", message_id=duplicate)

    assert await store.get_conversation(conversation.id) == before
    assert await _count(store, "SELECT count(*) FROM messages") == 1


async def test_text_a_database_would_refuse_is_kept_readable(store: ConversationStore) -> None:
    conversation = await store.create_conversation()
    await store.append_message(conversation.id, "user", "nul\x00 and lone \ud800 surrogate")
    reply = await store.start_assistant_message(conversation.id)
    await store.finish_message(
        reply,
        content="model said \x00",
        tool_calls=[{"id": "c", "type": "function", "function": {"name": "f", "arguments": "\x00"}}],
        usage=Usage(prompt_tokens=5, completion_tokens=2**40),
    )

    messages = (await store.get_conversation(conversation.id)).messages
    assert messages[0].content == "nul\ufffd and lone \ufffd surrogate"
    assert messages[1].content == "model said \ufffd"
    assert messages[1].tool_calls is not None
    assert messages[1].tool_calls[0]["function"]["arguments"] == "\ufffd"
    assert (messages[1].prompt_tokens, messages[1].completion_tokens) == (5, None)


# --- durability and several servers ----------------------------------------------------------


async def test_data_survives_closing_and_reopening(database_url: str) -> None:
    first = await open_store(database_url)
    conversation = await first.create_conversation("Durable")
    await first.append_message(conversation.id, "user", "remember me")
    reply = await first.start_assistant_message(conversation.id)
    await first.finish_message(reply, content="I will", status="cancelled")
    before = await first.get_conversation(conversation.id)
    await first.aclose()

    second = await open_store(database_url)
    try:
        assert await second.get_conversation(conversation.id) == before
        assert [c.id for c in (await second.list_conversations()).items] == [conversation.id]
    finally:
        await second.aclose()


async def test_two_servers_see_each_others_writes(database_url: str) -> None:
    one, two = await open_store(database_url), await open_store(database_url)
    try:
        conversation = await one.create_conversation()
        await one.append_message(conversation.id, "user", "from one")
        assert (await two.get_conversation(conversation.id)).messages[0].content == "from one"

        reply = await two.start_assistant_message(conversation.id)
        await two.finish_message(reply, content="from two")
        assert [m.content for m in (await one.get_conversation(conversation.id)).messages] == [
            "from one",
            "from two",
        ]
        await two.rename(conversation.id, "Shared")
        assert (await one.list_conversations()).items[0].title == "Shared"
        await one.delete(conversation.id)
        with pytest.raises(ConversationNotFound):
            await two.get_conversation(conversation.id)
    finally:
        await one.aclose()
        await two.aclose()


async def test_concurrent_appends_from_two_servers_get_distinct_positions(database_url: str) -> None:
    one, two = await open_store(database_url), await open_store(database_url)
    try:
        conversation = await one.create_conversation()
        appends = [
            server.append_message(conversation.id, "user", f"{name}-{i}")
            for i in range(15)
            for server, name in ((one, "one"), (two, "two"))
        ]
        await asyncio.gather(*appends)

        loaded = await two.get_conversation(conversation.id)
        assert [m.position for m in loaded.messages] == list(range(30))
        assert sorted(m.content for m in loaded.messages) == sorted(
            f"{name}-{i}" for i in range(15) for name in ("one", "two")
        )
        assert loaded.message_count == 30
    finally:
        await one.aclose()
        await two.aclose()
