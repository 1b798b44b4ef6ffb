"""The real SmolLM2 model under concurrent and cancelled requests: one generation at a time,
in arrival order, and a client that leaves stops its generation."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse
from openai import OpenAI

from tests.support.llamacpp import LONG_PROMPT, GenerationLog, smollm2_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, GenerationLog]]:
    with smollm2_server() as running:
        yield running


@pytest.fixture
def client(server: tuple[str, GenerationLog]) -> OpenAI:
    return OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture
def log(server: tuple[str, GenerationLog]) -> GenerationLog:
    return server[1]


@dataclass(slots=True)
class Received:
    text: str
    finish: str | None
    completion_tokens: int | None
    first_token_at: float
    last_token_at: float


def stream_reply(client: OpenAI, prompt: str, max_tokens: int) -> Received:
    text: list[str] = []
    finish = None
    usage = None
    first = last = 0.0
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content:
                last = time.monotonic()
                first = first or last
                text.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return Received("".join(text), finish, usage.completion_tokens if usage else None, first, last)


def queued_count(log: GenerationLog, mark: int, count: int) -> Callable[[], bool]:
    return lambda: len(log.queued(mark)) >= count


def test_concurrent_requests_are_served_whole_one_at_a_time_in_arrival_order(
    client: OpenAI, log: GenerationLog
) -> None:
    # Each request asks for a different number of tokens, which names its generation in the log.
    lengths = [60, 5, 6, 7]
    prompts = [LONG_PROMPT, "Describe the sea.", "Describe a forest.", "Describe the moon."]
    mark = log.mark()
    replies: list[Future[Received]] = []
    with ThreadPoolExecutor(len(lengths)) as pool:
        for index, (prompt, length) in enumerate(zip(prompts, lengths, strict=True)):
            replies.append(pool.submit(stream_reply, client, prompt, length))
            # The next request is sent only once this one has reached the model's queue.
            log.wait_until(queued_count(log, mark, index + 1), f"{index + 1} requests queued")
        received = [reply.result() for reply in replies]

    for reply, length in zip(received, lengths, strict=True):
        assert reply.text.strip()
        assert (reply.finish, reply.completion_tokens) == ("length", length)
    # Replies began in the order the requests arrived...
    firsts = [reply.first_token_at for reply in received]
    assert firsts == sorted(firsts)
    # ...and the server ran each generation whole before starting the next: no overlap, none cut.
    reports = log.reports(mark)
    assert [(r.finish_reason, r.completion_tokens) for r in reports] == [("length", n) for n in lengths]
    for before, after in itertools.pairwise(reports):
        assert before.ended <= after.started
    # The later requests really were waiting while the first was generating.
    queued_at = [entry.at for entry in log.queued(mark)]
    assert all(at < reports[0].ended for at in queued_at)


def test_closing_an_openai_stream_stops_the_generation(client: OpenAI, log: GenerationLog) -> None:
    mark = log.mark()
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=400,
        temperature=0,  # greedy SmolLM2 would run to all 400 tokens on this prompt
        stream=True,
    )
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 3:
                break
    stream.close()
    assert seen == 3
    assert_generation_was_cut(client, log, mark, seen, 400)


def test_leaving_an_api_chat_stream_stops_the_generation(
    server: tuple[str, GenerationLog], client: OpenAI, log: GenerationLog
) -> None:
    mark = log.mark()
    body = {"message": LONG_PROMPT, "max_tokens": 400, "temperature": 0}
    seen = 0
    with (
        httpx.Client(base_url=server[0], timeout=300) as http,
        connect_sse(http, "POST", "/api/chat", json=body) as source,
    ):
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if event.event == "text_delta" and json.loads(event.data)["text"]:
                seen += 1
                if seen == 3:
                    break
    assert seen == 3
    assert_generation_was_cut(client, log, mark, seen, 400)


def assert_generation_was_cut(client: OpenAI, log: GenerationLog, mark: int, seen: int, asked: int) -> None:
    # The next request gets the model: the turn passes on once the cancelled generation ends.
    follow_up = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
    )
    assert follow_up.choices[0].message.content
    assert follow_up.usage is not None and follow_up.usage.completion_tokens <= 4
    reports: list[Any] = log.reports(mark)
    assert len(reports) == 2, reports
    cancelled, served = reports
    # The server log shows the generation stopped when the client left, far short of what was
    # asked for; at SmolLM2's pace the rest would have taken many seconds.
    assert cancelled.finish_reason == "cancelled"
    assert seen <= cancelled.completion_tokens < asked // 2
    assert served.completion_tokens == follow_up.usage.completion_tokens
    assert cancelled.ended <= served.started


def test_a_prompt_too_long_is_refused_with_a_400_even_while_the_model_is_busy(
    client: OpenAI, log: GenerationLog
) -> None:
    mark = log.mark()
    busy = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=400,
        temperature=0,
        stream=True,
    )
    with busy:
        first = next(chunk for chunk in busy if chunk.choices and chunk.choices[0].delta.content)
        assert first.choices[0].delta.content
        # Checked before waiting for the model, so the refusal is a real 400, not a stream
        # that fails once the 400-token generation ahead of it is done.
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "tell me more " * 512}],
                max_tokens=5,
                stream=True,
            )
        assert raised.value.code == "context_length_exceeded"
        assert log.reports(mark) == []  # the long generation was still running
    log.wait_until(lambda: len(log.reports(mark)) == 1, "the long generation ended")
    assert log.reports(mark)[0].finish_reason == "cancelled"
