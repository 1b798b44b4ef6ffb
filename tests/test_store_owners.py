"""Private conversations in the store: every read and write of a conversation filters by the
caller's owner, on SQLite and PostgreSQL; another owner's conversation is one that doesn't exist."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from parley.store import ConversationNotFound, ConversationStore

pytest_plugins = ["tests.support.databases"]

ALICE, BOB = "open/alice", "open/bob"


async def not_found_message(call: Awaitable[object]) -> str:
    with pytest.raises(ConversationNotFound) as raised:
        await call
    return raised.value.message


async def test_another_owners_conversation_is_missing_to_every_method(store: ConversationStore) -> None:
    secret = await store.open_turn("c-secret", "my bank PIN is 4321", owner=ALICE)
    await store.finish_reply(secret.reply_id, "c-secret", content="noted")
    missing = "c-nothing"

    for conversation, owner in ((missing, ALICE), ("c-secret", BOB)):
        message = await not_found_message(store.get_conversation(conversation, owner=owner))
        assert message == f"conversation {conversation!r} does not exist"
        for call in (
            store.rename(conversation, "mine now", owner=owner),
            store.delete(conversation, owner=owner),
            store.export_json(conversation, owner=owner),
            store.export_markdown(conversation, owner=owner),
            store.history(conversation, owner=owner),
            store.append_message(conversation, "user", "hello?", owner=owner),
            store.start_assistant_message(conversation, owner=owner),
        ):
            assert await not_found_message(call) == message

    kept = await store.get_conversation("c-secret", owner=ALICE)
    assert kept.title == "my bank PIN is 4321" and kept.message_count == 2 and kept.owner == ALICE
    assert [m.content for m in kept.messages] == ["my bank PIN is 4321", "noted"]
    assert (await store.get_conversation("c-secret")).id == "c-secret"  # no owner: sees everything


async def test_a_turn_never_lands_in_another_owners_conversation(store: ConversationStore) -> None:
    first = await store.open_turn("c-taken", "alice's question", owner=ALICE)
    await store.finish_reply(first.reply_id, "c-taken", content="alice's answer")

    with pytest.raises(ConversationNotFound) as raised:
        await store.turn_history("c-taken", 8, owner=BOB)  # read before the turn: refused already
    assert raised.value.message == "conversation 'c-taken' does not exist"
    with pytest.raises(ConversationNotFound):
        await store.open_turn("c-taken", "bob writes here", owner=BOB)

    stored = await store.get_conversation("c-taken")
    assert [m.content for m in stored.messages] == ["alice's question", "alice's answer"]
    assert stored.message_count == 2 and stored.owner == ALICE
    # Alice goes on as before; a caller who sees everything may add to anyone's conversation.
    second = await store.open_turn("c-taken", "alice again", owner=ALICE)
    assert second.user_position == 2 and second.owner == ALICE
    third = await store.open_turn("c-taken", "from the admin", owner=None)
    assert third.user_position == 4 and third.owner == ALICE
    assert (await store.get_conversation("c-taken", owner=ALICE)).message_count == 6


async def test_turns_of_two_owners_racing_for_one_new_id_go_to_one_of_them(store: ConversationStore) -> None:
    """Turns batched together in one write: whoever's turn comes first makes the conversation; the
    other's turns, in the same batch, are refused and write nothing."""
    turns = [store.open_turn("c-race", f"{who} {n}", owner=who) for n in range(4) for who in (ALICE, BOB)]
    results = await asyncio.gather(*turns, return_exceptions=True)

    winner = (await store.get_conversation("c-race")).owner
    assert winner in (ALICE, BOB)
    for result, owner in zip(results, [who for _ in range(4) for who in (ALICE, BOB)], strict=True):
        assert isinstance(result, ConversationNotFound) == (owner != winner), result
    stored = await store.get_conversation("c-race", owner=winner)
    assert stored.message_count == 8
    user_messages = [m.content for m in stored.messages if m.role == "user"]
    assert sorted(user_messages) == sorted(f"{winner} {n}" for n in range(4))
    assert [m.position for m in stored.messages] == list(range(8))


async def test_the_history_kept_in_process_is_served_only_to_its_owner(store: ConversationStore) -> None:
    opened = await store.open_turn("c-kept", "remember: blue", owner=ALICE)
    await store.finish_reply(opened.reply_id, "c-kept", content="blue it is")
    assert [m.content for m in await store.recent_history("c-kept", 8, owner=ALICE)] == ["remember: blue", "blue it is"]

    with pytest.raises(ConversationNotFound):
        await store.recent_history("c-kept", 8, owner=BOB)
    with pytest.raises(ConversationNotFound):
        await store.recent_history("c-kept", None, owner=BOB)
    assert len(await store.recent_history("c-kept", 8)) == 2  # no owner: sees everything
    # A conversation no one named made (owner NULL) is not an end user's either.
    await store.open_turn("c-open", "anyone's", owner=None)
    with pytest.raises(ConversationNotFound):
        await store.recent_history("c-open", 8, owner=ALICE)
    assert await store.recent_history("c-new", 8, owner=BOB) == []  # a new id has no history, whoever asks


async def test_listing_shows_a_caller_its_own_conversations_page_by_page(store: ConversationStore) -> None:
    for n in range(5):
        await store.open_turn(f"c-alice-{n}", f"alice {n}", owner=ALICE)
        await store.open_turn(f"c-bob-{n}", f"bob {n}", owner=BOB)
    await store.create_conversation("made for bob", owner=BOB, conversation_id="c-bob-made")
    await store.get_or_create("c-bob-got", owner=BOB)
    with pytest.raises(ConversationNotFound):
        await store.get_or_create("c-alice-0", owner=BOB)

    seen: list[str] = []
    page = await store.list_conversations(limit=2, owner=ALICE)
    while True:
        seen += [item.id for item in page.items]
        if page.next_cursor is None:
            break
        page = await store.list_conversations(limit=2, cursor=page.next_cursor, owner=ALICE)
    assert seen == [f"c-alice-{n}" for n in reversed(range(5))]
    bobs = [item.id for item in (await store.list_conversations(limit=50, owner=BOB)).items]
    assert bobs == ["c-bob-got", "c-bob-made", *(f"c-bob-{n}" for n in reversed(range(5)))]
    assert len((await store.list_conversations(limit=50)).items) == 12  # no owner: every conversation


async def test_renaming_and_deleting_touch_only_the_callers_own(store: ConversationStore) -> None:
    await store.open_turn("c-own", "first words", owner=ALICE)
    renamed = await store.rename("c-own", "Alice's plans", owner=ALICE)
    assert renamed.title == "Alice's plans" and renamed.owner == ALICE
    with pytest.raises(ConversationNotFound):
        await store.delete("c-own", owner=BOB)
    assert (await store.get_conversation("c-own", owner=ALICE)).title == "Alice's plans"
    await store.delete("c-own", owner=ALICE)
    with pytest.raises(ConversationNotFound):
        await store.get_conversation("c-own")
