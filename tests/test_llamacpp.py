"""The llama.cpp provider, with the real SmolLM2 model, through Parley's real HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from openai import OpenAI

from tests.support.llamacpp import CONTEXT, LONG_PROMPT, GenerationLog, smollm2_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, GenerationLog]]:
    with smollm2_server() as running:
        yield running


@pytest.fixture(scope="module")
def client(server: tuple[str, GenerationLog]) -> OpenAI:
    return OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server: tuple[str, GenerationLog]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=300) as client:
        yield client


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def streamed(client: OpenAI, **body: Any) -> tuple[list[str], str | None, Any]:
    """The content pieces, the finish reason and the usage of a streamed reply."""
    pieces: list[str] = []
    finish = None
    usage = None
    stream = client.chat.completions.create(
        model="smollm2", stream=True, stream_options={"include_usage": True}, **body
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish, usage


def test_ready_reports_the_model_loaded(http: httpx.Client) -> None:
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"]["smollm2"] == {"state": "ready", "error": None}
    listed = http.get("/v1/models").json()["data"]
    assert [(m["id"], m["owned_by"], m["ready"]) for m in listed] == [("smollm2", "parley:llamacpp", True)]


def test_non_streamed_reply_with_usage(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=ask("Say hello."), max_tokens=40, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    # The GGUF's own chat template wraps the message (SmolLM2's adds a system prompt).
    assert 20 < reply.usage.prompt_tokens < 60
    assert 0 < reply.usage.completion_tokens <= 40
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_reply_matches_the_non_streamed_one_token_for_token(client: OpenAI) -> None:
    body: dict[str, Any] = {"messages": ask("Say hello."), "max_tokens": 40, "temperature": 0}
    pieces, finish, usage = streamed(client, **body)
    whole = client.chat.completions.create(model="smollm2", **body)
    text = "".join(pieces)
    assert text.strip()
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    # Plain ASCII text streams one token a chunk, so the chunks count the tokens generated.
    assert text.isascii()
    assert usage.completion_tokens == len(pieces)


def test_prompt_tokens_grow_with_the_prompt(client: OpenAI) -> None:
    short = client.chat.completions.create(model="smollm2", messages=ask("Hi."), max_tokens=1)
    longer = client.chat.completions.create(
        model="smollm2", messages=ask("Hi." + " Tell me about the sea." * 10), max_tokens=1
    )
    assert short.usage is not None and longer.usage is not None
    assert longer.usage.prompt_tokens - short.usage.prompt_tokens >= 50


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_ends_with_length_after_exactly_that_many_tokens(client: OpenAI, stream: bool) -> None:
    body: dict[str, Any] = {"messages": ask(LONG_PROMPT), "max_tokens": 7, "temperature": 0}
    if stream:
        pieces, finish, usage = streamed(client, **body)
        text = "".join(pieces)
    else:
        reply = client.chat.completions.create(model="smollm2", **body)
        text, finish, usage = reply.choices[0].message.content or "", reply.choices[0].finish_reason, reply.usage
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 7
    assert text.strip()


def test_same_seed_same_reply_other_seeds_vary(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model="smollm2",
            messages=ask("Invent a name for a new planet and describe it."),
            max_tokens=12,
            temperature=1.0,
            seed=seed,
        )
        return reply.choices[0].message.content or ""

    first = sample(1234)
    assert first.strip()
    assert sample(1234) == first
    assert len({first, sample(1), sample(2), sample(3)}) > 1


def test_greedy_reply_is_the_same_whatever_ran_before(client: OpenAI) -> None:
    body: dict[str, Any] = {"messages": ask("Say hello."), "max_tokens": 40, "temperature": 0}
    first = client.chat.completions.create(model="smollm2", **body).choices[0].message.content
    # A shorter run of the same prompt leaves it in llama.cpp's cache; the reply must not change.
    client.chat.completions.create(model="smollm2", **{**body, "max_tokens": 3})
    again = client.chat.completions.create(model="smollm2", **body).choices[0].message.content
    assert first and again == first


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_ends_the_reply_before_it(client: OpenAI, stream: bool) -> None:
    body: dict[str, Any] = {"messages": ask(LONG_PROMPT), "max_tokens": 30, "temperature": 0}
    reference = client.chat.completions.create(model="smollm2", **body).choices[0].message.content or ""
    words = reference.split(" ")
    assert len(words) > 6, reference
    stop = " " + " ".join(words[4:6])  # a stop sequence of several tokens, mid-reply
    expected = reference[: reference.index(stop)]
    if stream:
        pieces, finish, usage = streamed(client, stop=[stop, "never appears"], **body)
        text = "".join(pieces)
    else:
        reply = client.chat.completions.create(model="smollm2", stop=[stop, "never appears"], **body)
        text, finish, usage = reply.choices[0].message.content or "", reply.choices[0].finish_reason, reply.usage
    assert text == expected
    assert finish == "stop"
    assert usage is not None and 0 < usage.completion_tokens < 30


def test_api_chat_streams_the_reply_as_named_events(http: httpx.Client) -> None:
    body = {"message": "Say hello.", "max_tokens": 20, "temperature": 0}
    with connect_sse(http, "POST", "/api/chat", json=body) as source:
        assert source.response.status_code == 200
        events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_complete"
    assert set(names[1:-1]) == {"text_delta"}
    text = "".join(data["text"] for name, data in events if name == "text_delta")
    assert text.strip()
    complete = events[-1][1]
    assert events[0][1]["model"] == "smollm2"
    assert complete["finish_reason"] in ("stop", "length")
    assert 0 < complete["usage"]["completion_tokens"] <= 20
    assert complete["usage"]["prompt_tokens"] > 20


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_a_400(client: OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="smollm2", messages=ask("tell me more " * CONTEXT), max_tokens=5, stream=stream
        )
    assert raised.value.status_code == 400
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.type == "invalid_request_error"
    assert "context of 512 tokens" in raised.value.message


def test_prompt_longer_than_the_context_is_a_400_on_api_chat(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"message": "tell me more " * CONTEXT})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"


def test_reply_that_would_overrun_the_context_stops_at_its_end(client: OpenAI) -> None:
    filler = "one two three four five six seven eight nine ten. "
    probe = client.chat.completions.create(model="smollm2", messages=ask(filler * 40), max_tokens=1)
    assert probe.usage is not None
    per_filler = (probe.usage.prompt_tokens - 30) / 40
    repeats = int((CONTEXT - 30 - 6) / per_filler)  # leave room for only a few tokens
    reply = client.chat.completions.create(
        model="smollm2", messages=ask(filler * repeats), max_tokens=100, temperature=0
    )
    assert reply.usage is not None
    room = CONTEXT - reply.usage.prompt_tokens
    assert 0 < room < 40
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == room


def test_tools_are_refused_with_a_clear_400(client: OpenAI) -> None:
    tool: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="smollm2", messages=ask("What time is it?"), tools=[tool])
    assert raised.value.param == "tools"
    assert "does not support tools" in raised.value.message
