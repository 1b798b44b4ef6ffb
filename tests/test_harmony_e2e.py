"""gpt-oss Harmony text from an upstream that doesn't parse it, as the official openai client sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.support.server import running_parley
from tests.support.upstream import running_upstream

ANSWER = (
    "<|channel|>analysis<|message|>User asks for 2+2. Simple arithmetic.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
TOOL_CALL = (
    "<|channel|>analysis<|message|>Need to use function get_weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"location":"San Francisco"}<|call|>'
)
BAD_ARGUMENTS = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{location: SF<|call|>"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def parley() -> Iterator[str]:
    with running_upstream() as upstream:
        base = {"provider": "openai", "base_url": upstream.base_url + "/v1", "model": "echo-raw"}
        models = [
            {"name": "gpt-oss", **base},
            {"name": "gpt-oss-private", "send_reasoning": False, **base},
            {"name": "gpt-oss-unstored", "store_reasoning": False, **base},
            {"name": "raw", "harmony": "off", **base},
        ]
        with running_parley(models=models) as url:
            yield url


@pytest.fixture
def client(parley: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{parley}/v1", api_key="unused", max_retries=0)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_reasoning_and_answer_land_in_their_fields(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-oss", messages=user(ANSWER))
    message = reply.choices[0].message
    assert message.content == "2 + 2 = 4."
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == "User asks for 2+2. Simple arithmetic."
    assert reply.choices[0].finish_reason == "stop"


def test_streamed_reasoning_and_answer(client: openai.OpenAI) -> None:
    reasoning, content = [], []
    for chunk in client.chat.completions.create(model="gpt-oss", messages=user(ANSWER), stream=True):
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        reasoning.append(extra.get("reasoning_content") or "")
        content.append(delta.content or "")
        assert "<|" not in (delta.content or ""), "no Harmony markup reaches the answer"
    assert "".join(reasoning) == "User asks for 2+2. Simple arithmetic."
    assert "".join(content) == "2 + 2 = 4."
    assert sum(1 for piece in content if piece) > 1, "the answer streams in pieces"


def test_tool_call_streams_as_standard_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-oss", messages=user(TOOL_CALL), tools=[WEATHER_TOOL], stream=True
    )
    names, arguments, ids, finishes = [], [], [], []
    for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            ids.append(call.id)
            if call.function is not None:
                names.append(call.function.name)
                arguments.append(call.function.arguments or "")
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert [name for name in names if name] == ["get_weather"]
    assert next(i for i in ids if i).startswith("call_")
    assert json.loads("".join(arguments)) == {"location": "San Francisco"}
    assert len([a for a in arguments if a]) > 1, "arguments arrive as deltas"
    assert finishes == ["tool_calls"]


def test_tool_call_without_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-oss", messages=user(TOOL_CALL), tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco"}


def test_arguments_that_are_not_json_reach_the_client_as_the_model_wrote_them(client: openai.OpenAI) -> None:
    # As OpenAI's own API does: the client validates; a reply is not failed for its arguments.
    reply = client.chat.completions.create(model="gpt-oss", messages=user(BAD_ARGUMENTS), tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", "{location: SF")


def test_chat_api_gets_reasoning_events(parley: str) -> None:
    with (
        httpx.Client(base_url=parley) as http,
        connect_sse(http, "POST", "/api/chat", json={"message": ANSWER, "model": "gpt-oss"}) as source,
    ):
        events = [(event.event, json.loads(event.data)) for event in source.iter_sse()]
    reasoning = "".join(data["text"] for name, data in events if name == "reasoning_delta")
    answer = "".join(data["text"] for name, data in events if name == "text_delta")
    assert (reasoning, answer) == ("User asks for 2+2. Simple arithmetic.", "2 + 2 = 4.")


def test_reasoning_can_be_withheld_from_clients(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-oss-private", messages=user(ANSWER))
    assert reply.choices[0].message.content == "2 + 2 = 4."
    assert "reasoning_content" not in (reply.choices[0].message.model_extra or {})


def test_plain_text_and_forced_off_pass_through_untouched(client: openai.OpenAI) -> None:
    plain = "Plain words, even with <|odd|> markup and <|end|> inside."
    reply = client.chat.completions.create(model="gpt-oss", messages=user(plain))
    assert reply.choices[0].message.content == plain
    raw = client.chat.completions.create(model="raw", messages=user(ANSWER))
    assert raw.choices[0].message.content == ANSWER


def test_reasoning_storage_follows_the_model_config(parley: str) -> None:
    with httpx.Client(base_url=parley) as http:
        kept = http.post("/api/chat", json={"message": ANSWER, "model": "gpt-oss", "stream": False}).json()
        withheld = http.post("/api/chat", json={"message": ANSWER, "model": "gpt-oss-unstored", "stream": False}).json()
        assert kept["reasoning"] == withheld["reasoning"] == "User asks for 2+2. Simple arithmetic."
        stored = {
            reply["conversation_id"]: http.get(f"/api/conversations/{reply['conversation_id']}").json()["messages"][-1]
            for reply in (kept, withheld)
        }
    assert stored[kept["conversation_id"]]["reasoning"] == "User asks for 2+2. Simple arithmetic."
    assert stored[withheld["conversation_id"]]["reasoning"] is None
    assert stored[withheld["conversation_id"]]["content"] == "2 + 2 = 4."
