"""Fitting a conversation into the model's context: the system prompt and the newest turns kept,
room left for the reply, and the client told how many messages were left out.

The exact path runs the real SmolLM2 (llama.cpp's own template and tokenizer), loaded once for
the module directly and once behind a running Parley; the estimate path runs the fake model.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from httpx_sse import connect_sse
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.chat.context import fit_to_context, reply_reserve, shorten_old_tool_results
from parley.config import FakeConfig, LlamaCppConfig
from parley.errors import InvalidRequest
from parley.events import EventBatch, TextDelta, Usage
from parley.models.base import ChatMessage, ChatRequest, FunctionCall, GenerationParams, Model, ToolCall
from parley.models.fake import FakeModel
from parley.models.llamacpp import LlamaCppModel
from tests.support.llamacpp import CONTEXT, SMOLLM2
from tests.support.server import running_parley

# One thread: on a busy 2-core machine llama.cpp's two threads mostly wait for each other.
LOCAL = {**SMOLLM2, "threads": 1}


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def system(text: str) -> ChatMessage:
    return ChatMessage(role="system", content=text)


def estimate(messages: list[ChatMessage]) -> int:
    """The documented estimate for models Parley can't tokenize (for ASCII text: 4 characters a
    token), and 4 tokens a message."""
    assert all(message.text().isascii() for message in messages)
    return sum((len(message.text()) + 3) // 4 + 4 for message in messages)


def conversation(exchanges: int, words: int = 12) -> list[ChatMessage]:
    messages = [system("You are a terse assistant. Answer in one sentence.")]
    for index in range(exchanges):
        messages.append(user(f"Question {index}: " + " ".join(["tell me about ships and the sea"] * words)))
        messages.append(assistant(f"Answer {index}: ships sail the sea, and this is reply {index}."))
    messages.append(user("And what about the harbour?"))
    return messages


# --- the reply's reserve -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "max_tokens", "reserve"),
    [
        (512, None, 128),  # a quarter of the context ...
        (64, None, 32),  # ... at least 32 tokens ...
        (32768, None, 1024),  # ... at most 1024
        (512, 16, 16),  # what the request asks for
        (512, 100_000, 256),  # but never more than half the context
        (16, None, 8),  # the smallest context allowed still leaves half for the prompt
    ],
)
def test_reply_reserve(context: int, max_tokens: int | None, reserve: int) -> None:
    assert reply_reserve(context, max_tokens) == reserve


# --- the estimate path (remote and fake models) --------------------------------------------------


def fake(context_size: int | None) -> FakeModel:
    return FakeModel(FakeConfig(name="remote", provider="fake", context_size=context_size))


async def test_estimate_path_keeps_system_and_newest_turns() -> None:
    messages = conversation(40)
    fitted = await fit_to_context(fake(400), messages, max_tokens=50)
    kept = fitted.messages
    assert estimate(kept) + 50 <= 400 < estimate([kept[0], *messages[-len(kept) - 1 :]]) + 50
    assert kept[0] == messages[0] and kept[-1] == messages[-1]
    assert kept[1].role == "user"
    assert fitted.dropped == len(messages) - len(kept) > 0
    assert fitted.prompt_tokens == estimate(kept)


async def test_the_estimate_counts_cjk_text_a_token_a_character() -> None:
    # 400 CJK characters are about 400 tokens to a real tokenizer, not 100: the history must
    # be cut to fit, where counting four characters a token would have kept all of it.
    messages = [system("Reply in Chinese."), *[user("你好世界" * 25) for _ in range(3)]]
    fitted = await fit_to_context(fake(300), messages, max_tokens=50)
    assert fitted.messages == [messages[0], *messages[2:]]
    assert fitted.prompt_tokens is not None and fitted.prompt_tokens >= 200


async def test_unknown_context_size_keeps_everything() -> None:
    messages = conversation(200)
    fitted = await fit_to_context(fake(None), messages, max_tokens=None)
    assert (fitted.messages, fitted.dropped, fitted.prompt_tokens) == (messages, 0, None)


async def test_a_history_that_fits_is_sent_whole() -> None:
    messages = conversation(3)
    fitted = await fit_to_context(fake(4096), messages, max_tokens=None)
    assert (fitted.messages, fitted.dropped, fitted.prompt_tokens) == (messages, 0, estimate(messages))


async def test_a_tool_exchange_is_left_out_whole_never_cut_from_its_question() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
    messages = [
        system("Use tools."),
        user("old question " * 40),
        assistant("old answer " * 40),
        user("What is the weather in Oslo?"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_1", content="Sunny, 21 degrees. " * 20),  # (too short to shorten)
        assistant("It is sunny and 21 degrees in Oslo. " * 5),
        user("And tomorrow?"),
    ]
    # Room for the tool call, its result and what follows, but not for the question that asked:
    # the model gets the newest question alone rather than an answer to a question it can't see.
    budget = estimate([messages[0], *messages[4:]]) + 2
    fitted = await fit_to_context(fake(budget + 100), messages, max_tokens=100)
    assert fitted.messages == [messages[0], messages[-1]]
    assert fitted.dropped == 6


async def test_old_tool_results_are_shortened_before_turns_are_left_out() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="search", arguments='{"q": "fjords"}'))
    result = "Fjords are long, narrow sea inlets carved by glaciers. " * 40  # 2,200 characters
    messages = [
        system("Use tools."),
        user("Tell me about fjords."),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_1", content=result),
        assistant("Fjords are glacial sea inlets."),
        user("And where are the longest?"),
    ]
    shortened = shorten_old_tool_results(messages)
    # Room for the whole conversation with the result shortened, not with it whole.
    fitted = await fit_to_context(fake(estimate(shortened) + 100 + 2), messages, max_tokens=100)
    assert fitted.dropped == 0 and len(fitted.messages) == len(messages)
    kept = fitted.messages[3].text()
    assert kept.startswith(result[:200]) and kept.endswith(
        f"[shortened to fit the context: {len(result)} characters in all]"
    )
    assert fitted.messages[:3] == messages[:3] and fitted.messages[4:] == messages[4:]
    # A result after the newest question is the model's to read whole: never shortened.
    current_turn = messages[:4]
    assert shorten_old_tool_results(current_turn) is current_turn


async def test_newest_message_too_long_for_the_context_is_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        await fit_to_context(fake(200), [*conversation(2), user("word " * 400)], max_tokens=20)
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.status_code == 400
    assert "newest message needs" in refused.value.message and "180 for a prompt" in refused.value.message


async def test_system_prompt_too_long_for_the_context_is_refused_as_such() -> None:
    with pytest.raises(InvalidRequest) as refused:
        await fit_to_context(fake(200), [system("rule " * 400), user("hi")], max_tokens=20)
    assert refused.value.code == "context_length_exceeded"
    assert "system prompt alone needs" in refused.value.message


class ScriptModel(Model):
    """A token per non-ASCII character, a token per four ASCII ones, and markup: a tokenizer that
    disagrees with any size-based guide wherever the text mixes scripts, as real ones do."""

    provider = "script"

    def __init__(self, context_size: int) -> None:
        super().__init__("script", context_size)
        self.counts = 0

    @staticmethod
    def tokens(messages: list[ChatMessage]) -> int:
        def one(text: str) -> int:
            ascii_chars = sum(char.isascii() for char in text)
            return (ascii_chars + 3) // 4 + len(text) - ascii_chars + 5

        return 12 + sum(one(message.text()) for message in messages)

    async def count_tokens(self, messages: list[ChatMessage]) -> int:
        self.counts += 1
        return self.tokens(messages)

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        raise NotImplementedError("only counted here, never asked for a reply")
        yield [TextDelta("")]


TEXTS = st.text(alphabet=st.sampled_from(["a", " ", "é", "語", "🙂", "\n"]), max_size=300)
ROLE = st.sampled_from(["user", "assistant", "assistant", "tool"])


@settings(max_examples=300, deadline=None)
@given(
    with_system=st.booleans(),
    turns=st.lists(st.tuples(ROLE, TEXTS), min_size=0, max_size=120),
    newest=TEXTS,
    context=st.integers(min_value=16, max_value=6000),
    max_tokens=st.one_of(st.none(), st.integers(min_value=1, max_value=4000)),
)
def test_fit_is_the_longest_history_that_fits(
    with_system: bool, turns: list[tuple[str, str]], newest: str, context: int, max_tokens: int | None
) -> None:
    """Against a count over every possible start: whatever the text, the fit keeps the longest
    history that starts at a user turn and fits, and counts only a few candidates to find it."""
    messages = [system("Be brief.")] if with_system else []
    for role, text in turns:
        if role == "tool":
            messages.append(ChatMessage(role="tool", tool_call_id="call_1", content=text))
        else:
            messages.append(ChatMessage(role=role, content=text or "-"))
    messages.append(user(newest))
    model = ScriptModel(context)
    budget = context - reply_reserve(context, max_tokens)
    lead = 1 if with_system else 0
    starts = [lead] + [index for index in range(lead + 1, len(messages)) if messages[index].role == "user"]
    fitting = [start for start in starts if model.tokens([*messages[:lead], *messages[start:]]) <= budget]
    if not fitting:
        with pytest.raises(InvalidRequest, match="needs") as refused:
            asyncio.run(fit_to_context(model, messages, max_tokens))
        assert refused.value.code == "context_length_exceeded"
        return
    fitted = asyncio.run(fit_to_context(model, messages, max_tokens))
    assert fitted.messages == [*messages[:lead], *messages[fitting[0] :]]
    assert fitted.dropped == fitting[0] - lead
    assert fitted.prompt_tokens is not None and fitted.prompt_tokens <= budget
    assert model.counts <= 4 + 3 * math.ceil(math.log2(len(starts) + 1))


# --- the estimate path through /api/chat ---------------------------------------------------------

ECHO = {"name": "echo", "provider": "fake", "context_size": 300}
# Asked for replies of up to 100 tokens unless a request says otherwise.
TERSE = {"name": "terse", "provider": "fake", "context_size": 300, "defaults": {"max_tokens": 100}}


@pytest.fixture(scope="module")
def echo_http() -> Iterator[httpx.Client]:
    with running_parley(models=[ECHO, TERSE]) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def chat(http: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with connect_sse(http, "POST", "/api/chat", json=body) as source:
        assert source.response.status_code == 200, source.response.read()
        return [(event.event, json.loads(event.data)) for event in source.iter_sse()]


def stored(http: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    """The conversation's messages once its last reply has been saved."""
    deadline = time.monotonic() + 30
    while True:
        messages: list[dict[str, Any]] = http.get(f"/api/conversations/{conversation_id}").json()["messages"]
        if messages[-1]["status"] != "streaming" or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)


def test_estimate_path_truncates_and_says_so(echo_http: httpx.Client) -> None:
    conversation_id = None
    seen: list[int] = []
    for turn in range(6):
        message = f"Message {turn}: " + "a long line about the weather at sea " * 10
        events = chat(echo_http, {"message": message, "conversation_id": conversation_id, "max_tokens": 20})
        start = events[0][1]
        conversation_id = start["conversation_id"]
        assert events[-1][0] == "message_complete"
        assert start["truncated"] == (start["truncated_messages"] > 0)
        seen.append(start["truncated_messages"])
        messages = stored(echo_http, conversation_id)
        history = [ChatMessage(role=m["role"], content=m["content"]) for m in messages[:-2]]
        kept = [*history[start["truncated_messages"] :], user(message)]
        assert estimate(kept) + 20 <= 300
        if start["truncated"]:  # one more exchange would not have fitted
            assert estimate([*history[start["truncated_messages"] - 2 :], user(message)]) + 20 > 300
    # Each exchange is ~130 estimated tokens of the 280 a prompt has: two fit, the third truncates.
    assert seen == [0, 0, 2, 4, 6, 8]


# --- the exact path: the real SmolLM2 tokenizer --------------------------------------------------


# The model and the tests that use it share one event loop: a generation's end is reported to
# the loop that started it, so that loop must outlive every test.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2() -> AsyncIterator[LlamaCppModel]:
    model = LlamaCppModel(LlamaCppConfig.model_validate(LOCAL))
    await model.load()
    yield model
    await model.aclose()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("max_tokens", [None, 16, 100_000])
async def test_fitted_prompt_fits_by_the_real_tokenizer(smollm2: LlamaCppModel, max_tokens: int | None) -> None:
    messages = conversation(500)  # 1,001 turns, about 30,000 tokens
    fitted = await fit_to_context(smollm2, messages, max_tokens)
    kept = fitted.messages
    reserve = reply_reserve(CONTEXT, max_tokens)
    tokens = await smollm2.count_tokens(kept)
    assert tokens == fitted.prompt_tokens
    assert tokens + reserve <= CONTEXT
    # The longest such history: one more exchange would not have fitted.
    assert await smollm2.count_tokens([messages[0], *messages[-len(kept) - 1 :]]) + reserve > CONTEXT
    assert kept[0] == messages[0] and kept[1].role == "user" and kept[-1] == messages[-1]
    assert fitted.dropped == len(messages) - len(kept) > 900
    # llama.cpp takes the fitted request (its own check is the prompt against the whole context).
    request = ChatRequest(messages=kept, params=GenerationParams(max_tokens=max_tokens, temperature=0))
    stream = smollm2.stream(request)
    assert isinstance(stream, AsyncGenerator)
    try:
        first = await anext(stream)
    finally:
        await stream.aclose()  # stops the generation
    assert first and isinstance(first[0], (TextDelta, Usage))


@pytest.fixture(scope="module")
def local_http() -> Iterator[httpx.Client]:
    with running_parley(models=[LOCAL], ready_timeout=120) as url, httpx.Client(base_url=url, timeout=300) as client:
        yield client


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_long_chat_is_truncated_and_says_so(local_http: httpx.Client, smollm2: LlamaCppModel) -> None:
    conversation_id = None
    reports: list[bool] = []
    for turn in range(8):
        message = f"Note {turn}: " + "the lighthouse keeper counted the ships that passed in the night " * 6
        body = {"message": message, "conversation_id": conversation_id, "max_tokens": 12}
        events = await asyncio.to_thread(chat, local_http, body)
        start, (last, complete) = events[0][1], events[-1]
        conversation_id = start["conversation_id"]
        assert last == "message_complete", events[-1]
        usage = complete["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= CONTEXT
        assert start["truncated"] == (start["truncated_messages"] > 0)
        reports.append(start["truncated"])
        # The prompt the model saw is the stored history less what message_start says was left out.
        messages = await asyncio.to_thread(stored, local_http, conversation_id)
        assert [m["status"] for m in messages] == ["complete"] * len(messages)
        history = [ChatMessage(role=m["role"], content=m["content"]) for m in messages[:-2]]
        kept = [*history[start["truncated_messages"] :], user(message)]
        assert kept[0].role == "user"
        assert await smollm2.count_tokens(kept) == usage["prompt_tokens"]
        if start["truncated"]:
            assert usage["prompt_tokens"] + 12 <= CONTEXT
            break
    assert reports[-1] is True and not any(reports[:-1]) and len(reports) > 1


@pytest.mark.slow
def test_message_too_long_is_a_400_and_nothing_is_stored(local_http: httpx.Client) -> None:
    events = chat(local_http, {"message": "Hello there.", "max_tokens": 4})
    conversation_id = events[0][1]["conversation_id"]
    before = stored(local_http, conversation_id)
    listed = local_http.get("/api/conversations", params={"limit": 200}).json()["data"]
    too_long = "tell me more " * CONTEXT
    for body in ({"message": too_long, "conversation_id": conversation_id}, {"message": too_long}):
        refused = local_http.post("/api/chat", json={**body, "max_tokens": 4})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "context_length_exceeded",
            "message",
        )
        assert "newest message needs" in error["message"] and "context of 512" in error["message"]
    # The refused turn left nothing: not in the conversation, and no new, empty conversation.
    assert stored(local_http, conversation_id) == before
    assert local_http.get("/api/conversations", params={"limit": 200}).json()["data"] == listed


def test_the_models_default_max_tokens_is_the_room_kept_for_the_reply(echo_http: httpx.Client) -> None:
    message = "a line about the weather at sea " * 8  # 68 estimated tokens, echoed back
    first = chat(echo_http, {"message": message, "model": "terse"})[0][1]
    stored(echo_http, first["conversation_id"])
    second = chat(echo_http, {"message": message, "model": "terse", "conversation_id": first["conversation_id"]})
    # 204 tokens would fit beside a default quarter of the context (75), not beside the 100 the
    # model will be asked for: the first exchange is left out, and the client is told.
    assert estimate([user(message)] * 3) == 204
    assert (second[0][1]["truncated"], second[0][1]["truncated_messages"]) == (True, 2)
    assert second[-1][0] == "message_complete"
