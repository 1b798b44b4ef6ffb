"""The turn path's writes (open a turn, save progress, finish the reply), batched by one writer per store."""

from __future__ import annotations

import asyncio

import pytest

from parley.chat.run import Timing
from parley.events import Usage
from parley.store import ConversationStore, MessageNotStreaming, ReplyProgress


async def test_a_turn_is_stored_as_the_old_path_stored_it(store: ConversationStore) -> None:
    opened = await store.open_turn("conv-a", "  What is   the capital of France? ", model="m1", agent="guide")
    await store.finish_reply(
        opened.reply_id,
        "conv-a",
        content="Paris.",
        usage=Usage(12, 3),
        timing=Timing(40.0, 90.0, 33.3),
        finish_reason="stop",
    )
    conversation = await store.get_conversation("conv-a")
    assert conversation.title == "What is the capital of France?"
    assert (conversation.model, conversation.agent, conversation.message_count) == ("m1", "guide", 2)
    user, reply = conversation.messages
    assert (user.role, user.position, user.status, user.model, user.agent) == ("user", 0, "complete", None, "guide")
    assert (reply.role, reply.position, reply.status, reply.content) == ("assistant", 1, "complete", "Paris.")
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (12, 3, "stop")
    assert [m.content for m in await store.history("conv-a")][-1] == "Paris."


async def test_concurrent_turns_on_one_conversation_keep_their_order(store: ConversationStore) -> None:
    opened = await asyncio.gather(*(store.open_turn("busy", f"message {n}", model="m") for n in range(40)))
    positions = sorted(turn.user_position for turn in opened)
    assert positions == list(range(0, 80, 2)), "each turn has two positions of its own"
    await asyncio.gather(
        *(store.finish_reply(turn.reply_id, "busy", content=f"reply to {turn.user_position}") for turn in opened)
    )
    messages = (await store.get_conversation("busy")).messages
    assert [m.position for m in messages] == list(range(80))
    for user, reply in zip(messages[::2], messages[1::2], strict=True):
        assert (user.role, reply.role) == ("user", "assistant")
        assert reply.content == f"reply to {user.position}", "every reply follows its own question"


async def test_many_conversations_at_once_each_get_their_turns(store: ConversationStore) -> None:
    opened = await asyncio.gather(*(store.open_turn(f"c{n % 7}", f"hello {n}") for n in range(70)))
    await asyncio.gather(*(store.finish_reply(t.reply_id, t.conversation_id, content="ok") for t in opened))
    page = await store.list_conversations(limit=20)
    assert sorted(item.id for item in page.items) == [f"c{n}" for n in range(7)]
    assert all(item.message_count == 20 for item in page.items)


async def test_a_finished_reply_is_not_finished_twice(store: ConversationStore) -> None:
    opened = await store.open_turn("twice", "hi")
    await store.finish_reply(opened.reply_id, "twice", content="first", status="complete")
    with pytest.raises(MessageNotStreaming):
        await store.finish_reply(opened.reply_id, "twice", content="second", status="failed")
    reply = (await store.get_conversation("twice")).messages[1]
    assert (reply.content, reply.status) == ("first", "complete")


async def test_a_reply_swept_as_abandoned_refuses_its_late_finish(store: ConversationStore) -> None:
    opened = await store.open_turn("swept", "hi")
    await store.save_progress([ReplyProgress(opened.reply_id, "partial", None)])
    assert await store.fail_interrupted() == 1
    with pytest.raises(MessageNotStreaming):
        await store.finish_reply(opened.reply_id, "swept", content="partial and more")
    reply = (await store.get_conversation("swept")).messages[1]
    assert (reply.content, reply.status) == ("partial", "failed")


async def test_progress_is_saved_only_while_the_reply_streams(store: ConversationStore) -> None:
    opened = await store.open_turn("progress", "hi")
    await store.save_progress([ReplyProgress(opened.reply_id, "Hel", "thinking")])
    reply = (await store.get_conversation("progress")).messages[1]
    assert (reply.content, reply.reasoning, reply.status) == ("Hel", "thinking", "streaming")
    await store.finish_reply(opened.reply_id, "progress", content="Hello")
    await store.save_progress([ReplyProgress(opened.reply_id, "Hel", None)])  # a late save changes nothing
    reply = (await store.get_conversation("progress")).messages[1]
    assert (reply.content, reply.status) == ("Hello", "complete")


async def test_a_refused_finish_in_a_batch_fails_alone(store: ConversationStore) -> None:
    good = [store.open_turn(f"good-{n}", "fine") for n in range(5)]
    # A reply finished twice in one batch: only the second finish is refused; the other writes stand.
    first = await store.open_turn("dup", "one")
    results = await asyncio.gather(
        *good,
        store.finish_reply(first.reply_id, "dup", content="done"),
        store.finish_reply(first.reply_id, "dup", content="done again"),
        return_exceptions=True,
    )
    failures = [result for result in results if isinstance(result, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], MessageNotStreaming)
    assert len((await store.list_conversations(limit=50)).items) == 6


async def test_a_full_queue_makes_writers_wait_and_loses_nothing(store: ConversationStore) -> None:
    small = ConversationStore(store.engine, max_batch=2, max_queue=4)  # most submitters wait their turn
    most_queued = 0

    async def watch() -> None:
        nonlocal most_queued
        while True:
            most_queued = max(most_queued, small.queued_writes)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        opened = await asyncio.gather(*(small.open_turn(f"bp-{n}", f"message {n}") for n in range(60)))
    finally:
        watcher.cancel()
    assert most_queued == 4, "the queue fills up to its bound, and no further"
    assert len({turn.conversation_id for turn in opened}) == 60
    for n in range(60):
        assert (await store.get_conversation(f"bp-{n}")).messages[0].content == f"message {n}"


async def test_closing_the_store_applies_what_is_queued(store: ConversationStore) -> None:
    closing = ConversationStore(store.engine)
    submitted = [asyncio.create_task(closing.open_turn(f"late-{n}", "queued")) for n in range(30)]
    await asyncio.sleep(0)  # all are queued (or being written), none awaited
    await closing.aclose()
    opened = await asyncio.gather(*submitted)
    assert len(opened) == 30
    for n in range(30):
        assert (await store.get_conversation(f"late-{n}")).message_count == 2


async def test_recent_history_always_matches_what_is_stored(store: ConversationStore) -> None:
    """However turns interleave (kept in process on SQLite), the history a turn reads is the stored one."""
    conversations = ["h-a", "h-b", "h-c"]

    async def turn(conversation: str, n: int) -> None:
        before = await store.recent_history(conversation, 8)
        # Other turns of this conversation run meanwhile: what was read is in the stored history, in
        # its order, even if replies that were streaming then have since been stored among it.
        if before:  # (a conversation's first turn reads nothing: it does not exist yet)
            stored = iter(await store.history(conversation))
            assert all(message in stored for message in before)
        opened = await store.open_turn(conversation, f"question {n}")
        status = ("complete", "cancelled", "failed")[n % 3]
        content = "" if n % 5 == 0 else f"answer {n}"
        await store.finish_reply(opened.reply_id, conversation, content=content, status=status)  # type: ignore[arg-type]

    for round_ in range(4):
        await asyncio.gather(*(turn(conversations[n % 3], round_ * 10 + n) for n in range(9)))
        for conversation in conversations:
            stored = await store.history(conversation)
            assert await store.recent_history(conversation) == stored
            assert await store.recent_history(conversation, 5) == stored[-5:]
    await store.delete("h-a")
    assert await store.recent_history("h-a") == []
    await store.rename("h-b", "renamed")
    assert await store.recent_history("h-b") == await store.history("h-b")


async def test_a_history_read_from_the_database_continues_correctly(store: ConversationStore) -> None:
    first = await store.open_turn("reread", "one")
    await store.finish_reply(first.reply_id, "reread", content="uno")
    fresh = ConversationStore(store.engine)  # a restarted server: nothing kept yet
    assert [m.content for m in await fresh.recent_history("reread", 10)] == ["one", "uno"]
    second = await fresh.open_turn("reread", "two")
    await fresh.finish_reply(second.reply_id, "reread", content="dos")
    assert [m.content for m in await fresh.recent_history("reread", 10)] == ["one", "uno", "two", "dos"]
    assert await fresh.recent_history("reread") == await fresh.history("reread")


async def test_another_servers_turn_is_caught_by_position(store: ConversationStore) -> None:
    """Two servers on one database each keep histories: a turn that lands after the other server's
    learns it from its position and reads the history again, as the model must see it."""
    other = ConversationStore(store.engine)
    first = await store.open_turn("shared", "one")
    await store.finish_reply(first.reply_id, "shared", content="uno")
    kept = await store.turn_history("shared", 50)  # now kept here
    assert [m.content for m in kept.messages] == ["one", "uno"] and kept.next_position == 2

    theirs = await other.open_turn("shared", "two")  # the other server's turn
    await other.finish_reply(theirs.reply_id, "shared", content="dos")

    stale = await store.turn_history("shared", 50)
    mine = await store.open_turn("shared", "three")
    assert mine.user_position != stale.next_position, "the turn sees that the conversation grew"
    fresh = await store.turn_history("shared", 50, before=mine.user_position)
    assert [m.content for m in fresh.messages] == ["one", "uno", "two", "dos"]
    await store.finish_reply(mine.reply_id, "shared", content="tres")
    assert await store.recent_history("shared") == await store.history("shared")
