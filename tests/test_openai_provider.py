"""The `openai` provider end to end: official client → Parley → a real scripted upstream.

What a user sees on Parley's `/v1` (through the `openai` client) and `/api/chat` (SSE) when the
upstream answers well, and what the upstream receives from Parley.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse
from openai import OpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
)
from openai.types.shared_params import ResponseFormatJSONSchema

from tests.support.server import running_parley
from tests.support.upstream import (
    PROMPT_TOKENS,
    RAGGED_PIECES,
    REASONING_ANSWER,
    REASONING_PIECES,
    TEXT_PIECES,
    TEXT_REPLY,
    TOOL_CALLS,
    Upstream,
    new_marker,
)

WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def parley(upstream: Upstream) -> Iterator[str]:
    with running_parley(models=upstream.parley_models(), stream_head_wait_seconds=5.0) as url:
        yield url


@pytest.fixture(scope="module")
def client(parley: str) -> OpenAI:
    return OpenAI(base_url=parley + "/v1", api_key="x", max_retries=0, timeout=30)


def chat_events(parley: str, **body: Any) -> list[tuple[str, dict[str, Any]]]:
    """POST /api/chat and read its SSE stream: (event name, data) in order.

    Keep-alive comments are skipped: httpx-sse reports one as an empty event once an `id` was seen.
    """
    with (
        httpx.Client(timeout=30) as http,
        connect_sse(http, "POST", parley + "/api/chat", json=body) as source,
    ):
        assert source.response.status_code == 200
        return [(event.event, json.loads(event.data)) for event in source.iter_sse() if event.data]


# -- text --


def test_streamed_text_arrives_in_pieces_with_usage_when_asked(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    stream = client.chat.completions.create(
        model="text",
        messages=[{"role": "user", "content": ask}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == TEXT_PIECES
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert chunks[-1].usage.completion_tokens == len(TEXT_PIECES)
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + len(TEXT_PIECES)
    seen = upstream.find(ask)
    assert seen.path == "/v1/chat/completions"
    assert seen.body["stream"] is True
    assert seen.body["messages"] == [{"role": "user", "content": ask}]


def test_streamed_text_without_include_usage_has_no_usage_chunk(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    chunks = list(
        client.chat.completions.create(model="text", messages=[{"role": "user", "content": ask}], stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT_REPLY
    # Parley still asks the upstream for usage: it needs it for its own accounting.
    assert upstream.find(ask).body["stream_options"] == {"include_usage": True}


def test_ragged_upstream_framing_still_gives_exact_text(client: OpenAI, parley: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model="ragged", messages=[{"role": "user", "content": new_marker()}], stream=True
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == RAGGED_PIECES
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    events = chat_events(parley, message=new_marker(), model="ragged")
    assert [data["text"] for name, data in events if name == "text_delta"] == RAGGED_PIECES


def test_non_streamed_text_is_one_whole_reply(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="text", messages=[{"role": "user", "content": new_marker()}])
    assert reply.object == "chat.completion"
    assert reply.model == "text"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == TEXT_REPLY
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT_TOKENS, len(TEXT_PIECES))


def test_upstream_length_finish_reaches_the_client(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    reply = client.chat.completions.create(
        model="text", messages=[{"role": "user", "content": ask}], max_completion_tokens=2
    )
    assert reply.choices[0].message.content == "".join(TEXT_PIECES[:2])
    assert reply.choices[0].finish_reason == "length"
    assert upstream.find(ask).body["max_tokens"] == 2


def test_sampling_and_format_parameters_reach_the_upstream(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    schema: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    client.chat.completions.create(
        model="text",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": ask}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["\n\n", "END"],
        seed=1234,
        response_format=schema,
    )
    body = upstream.find(ask).body
    assert body["model"] == "text"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ask},
    ]
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 50
    assert body["stop"] == ["\n\n", "END"]
    assert body["seed"] == 1234
    assert body["response_format"] == schema
    assert "tools" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize("asked_as", ["max_tokens", "max_completion_tokens"])
def test_a_model_can_send_the_token_limit_as_max_completion_tokens(
    client: OpenAI, upstream: Upstream, asked_as: str
) -> None:
    ask = new_marker()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": ask}]
    if asked_as == "max_tokens":
        client.chat.completions.create(model="reasoner", messages=messages, max_tokens=40)
    else:
        client.chat.completions.create(model="reasoner", messages=messages, max_completion_tokens=40)
    body = upstream.find(ask).body
    assert body["max_completion_tokens"] == 40
    assert "max_tokens" not in body


def test_single_stop_string_is_forwarded_as_a_list(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    client.chat.completions.create(model="text", messages=[{"role": "user", "content": ask}], stop="END")
    assert upstream.find(ask).body["stop"] == ["END"]


def test_configured_upstream_name_key_and_headers_are_used(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    reply = client.chat.completions.create(model="keyed", messages=[{"role": "user", "content": ask}])
    assert reply.model == "keyed"  # the client sees Parley's name for the model
    assert reply.choices[0].message.content == TEXT_REPLY
    seen = upstream.find(ask)
    assert seen.model == "text"  # the upstream sees its own
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert seen.headers["X-Org"] == "parley-tests"
    # A model without a key sends no Authorization header at all.
    ask = new_marker()
    client.chat.completions.create(model="text", messages=[{"role": "user", "content": ask}])
    assert "Authorization" not in upstream.find(ask).headers


# -- tool calls --


def test_streamed_tool_call_deltas_reach_the_client(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    chunks = list(
        client.chat.completions.create(
            model="tools",
            messages=[{"role": "user", "content": ask}],
            tools=[WEATHER_TOOL],
            tool_choice="auto",
            stream=True,
        )
    )
    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    # Arguments arrive in pieces, as the upstream sent them; the first piece names the call.
    assert len(deltas) == sum(1 + len(pieces) for _, _, pieces in TOOL_CALLS)
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += delta.id or ""
        if delta.function is not None:
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert calls == {
        index: {"id": call_id, "name": name, "arguments": "".join(pieces)}
        for index, (call_id, name, pieces) in enumerate(TOOL_CALLS)
    }
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    body = upstream.find(ask).body
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == "auto"


def test_non_streamed_tool_calls_are_assembled(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    choice: ChatCompletionNamedToolChoiceParam = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model="tools",
        messages=[{"role": "user", "content": ask}],
        tools=[WEATHER_TOOL],
        tool_choice=choice,
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None
    got = [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls]  # type: ignore[union-attr]
    assert got == [(call_id, "function", name, "".join(pieces)) for call_id, name, pieces in TOOL_CALLS]
    assert upstream.find(ask).body["tool_choice"] == choice


def test_a_tool_result_turn_is_forwarded_whole(client: OpenAI, upstream: Upstream) -> None:
    ask = new_marker()
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    client.chat.completions.create(model="text", messages=messages, tools=[WEATHER_TOOL])
    assert upstream.find(ask).body["messages"] == [
        {"role": "user", "content": ask},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


def test_chat_api_emits_whole_tool_calls(parley: str) -> None:
    events = chat_events(parley, message=new_marker(), model="tools")
    names = [name for name, _ in events]
    assert names == ["message_start", "tool_call", "tool_call", "message_complete"]
    calls = [data for name, data in events if name == "tool_call"]
    assert calls == [
        {"id": call_id, "name": name, "arguments": "".join(pieces)} for call_id, name, pieces in TOOL_CALLS
    ]
    assert events[-1][1]["finish_reason"] == "tool_calls"


# -- reasoning --


@pytest.mark.parametrize("model", ["reasoning", "reasoning-field"])
def test_reasoning_streams_as_reasoning_content(client: OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": new_marker()}], stream=True)
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [d.model_extra.get("reasoning_content") for d in deltas if d.model_extra]
    assert [r for r in reasoning if r] == REASONING_PIECES
    assert "".join(d.content or "" for d in deltas) == REASONING_ANSWER


def test_non_streamed_reply_carries_reasoning_content(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="reasoning", messages=[{"role": "user", "content": new_marker()}])
    message = reply.choices[0].message
    assert message.content == REASONING_ANSWER
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == "".join(REASONING_PIECES)


def test_chat_api_streams_reasoning_then_text(parley: str) -> None:
    events = chat_events(parley, message=new_marker(), model="reasoning")
    names = [name for name, _ in events]
    assert names == ["message_start", "reasoning_delta", "reasoning_delta", "text_delta", "message_complete"]
    assert [data["text"] for name, data in events if name == "reasoning_delta"] == REASONING_PIECES
    assert [data["text"] for name, data in events if name == "text_delta"] == [REASONING_ANSWER]


# -- /api/chat text --


def test_chat_api_streams_text_and_completes_with_usage(parley: str, upstream: Upstream) -> None:
    ask = new_marker()
    events = chat_events(parley, message=ask, model="text", temperature=0.5, max_tokens=40)
    assert events[0][0] == "message_start"
    assert events[0][1]["model"] == "text"
    assert [data["text"] for name, data in events if name == "text_delta"] == TEXT_PIECES
    name, complete = events[-1]
    assert name == "message_complete"
    assert complete["finish_reason"] == "stop"
    assert complete["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(TEXT_PIECES),
        "total_tokens": PROMPT_TOKENS + len(TEXT_PIECES),
    }
    body = upstream.find(ask).body
    assert (body["temperature"], body["max_tokens"]) == (0.5, 40)


def test_chat_api_json_reply(parley: str) -> None:
    reply = httpx.post(
        parley + "/api/chat", json={"message": new_marker(), "model": "reasoning", "stream": False}, timeout=30
    )
    assert reply.status_code == 200
    data = reply.json()
    assert data["content"] == REASONING_ANSWER
    assert data["reasoning"] == "".join(REASONING_PIECES)
    assert data["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 6


# -- an upstream that ignores `stream` --


def test_a_whole_json_answer_to_a_stream_request_is_streamed_on(client: OpenAI, parley: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model="json-only",
            messages=[{"role": "user", "content": new_marker()}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REASONING_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    reply = httpx.post(
        parley + "/api/chat", json={"message": new_marker(), "model": "json-only", "stream": False}, timeout=30
    )
    assert (reply.json()["content"], reply.json()["reasoning"]) == (REASONING_ANSWER, "".join(REASONING_PIECES))


def test_whole_json_tool_calls_are_kept_apart(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="json-tools", messages=[{"role": "user", "content": new_marker()}], tools=[WEATHER_TOOL]
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    got = [(c.id, c.function.name, c.function.arguments) for c in calls]  # type: ignore[union-attr]
    assert got == [(call_id, name, "".join(pieces)) for call_id, name, pieces in TOOL_CALLS]
