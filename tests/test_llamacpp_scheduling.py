"""The real SmolLM2 model under concurrent and cancelled requests: up to `parallel` replies
decoded together, each exactly what it would be alone; the rest wait in arrival order; a
client that leaves stops its own generation and no other."""

from __future__ import annotations

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

PARALLEL = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, GenerationLog]]:
    # The cache is off here so that every prompt is read whole, in the batch, beside the others.
    with smollm2_server(parallel=PARALLEL, cache_slots=PARALLEL + 1, prompt_cache=False) as running:
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
    token_times: list[float]


def stream_reply(client: OpenAI, prompt: str, max_tokens: int) -> Received:
    text: list[str] = []
    finish = None
    usage = None
    first = last = 0.0
    times: list[float] = []
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
                times.append(last)
                text.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return Received("".join(text), finish, usage.completion_tokens if usage else None, first, last, times)


def queued_count(log: GenerationLog, mark: int, count: int) -> Callable[[], bool]:
    return lambda: len(log.queued(mark)) >= count


PROMPTS = [LONG_PROMPT, "Describe the sea.", "Describe a forest.", "Describe the moon."]


def one_at_a_time(client: OpenAI, prompts: list[str], lengths: list[int]) -> list[str]:
    return [stream_reply(client, prompt, length).text for prompt, length in zip(prompts, lengths, strict=True)]


def test_four_concurrent_chats_decode_together_and_match_their_one_at_a_time_texts(
    client: OpenAI, log: GenerationLog
) -> None:
    lengths = [40, 41, 42, 43]  # a different length names each generation in the log
    alone = one_at_a_time(client, PROMPTS, lengths)
    mark = log.mark()
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        replies = list(pool.map(lambda job: stream_reply(client, *job), zip(PROMPTS, lengths, strict=True)))
    assert [reply.text for reply in replies] == alone
    assert all(reply.text.strip() for reply in replies)
    assert [(reply.finish, reply.completion_tokens) for reply in replies] == [("length", n) for n in lengths]
    # They really ran at once: every generation began before any of them ended.
    reports = log.reports(mark)
    assert sorted(r.completion_tokens for r in reports) == lengths
    assert max(r.started for r in reports) < min(r.ended for r in reports)


def test_requests_beyond_parallel_wait_in_arrival_order(client: OpenAI, log: GenerationLog) -> None:
    lengths = [60, 61, 62, 63, 5, 6]
    prompts = [*PROMPTS, "Describe a river.", "Describe a mountain."]
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
    by_length = {report.completion_tokens: report for report in log.reports(mark)}
    first_place_free = min(by_length[n].ended for n in lengths[:PARALLEL])
    # The fifth and sixth waited for a place, and took one in the order they came.
    assert first_place_free <= by_length[5].started <= by_length[6].started
    assert all(by_length[n].started < first_place_free for n in lengths[:PARALLEL])


def test_a_cancel_in_the_middle_of_a_batch_leaves_the_others_untouched(client: OpenAI, log: GenerationLog) -> None:
    others = ["Describe the sea.", "Describe a forest."]
    alone = one_at_a_time(client, others, [80, 81])
    mark = log.mark()
    with ThreadPoolExecutor(2) as pool:
        running = [
            pool.submit(stream_reply, client, prompt, length) for prompt, length in zip(others, [80, 81], strict=True)
        ]
        log.wait_until(queued_count(log, mark, 2), "both requests queued")
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": LONG_PROMPT}],
            max_tokens=400,
            temperature=0,
            stream=True,
        )
        seen = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
                if seen == 3:
                    break
        stream.close()
        received = [reply.result() for reply in running]
    assert [reply.text for reply in received] == alone
    assert [reply.completion_tokens for reply in received] == [80, 81]
    log.wait_until(lambda: len(log.reports(mark)) == 3, "three generations ended")
    (cancelled,) = [r for r in log.reports(mark) if r.finish_reason == "cancelled"]
    assert seen <= cancelled.completion_tokens < 200


def test_a_long_prompt_joins_a_running_batch_without_stalling_it(client: OpenAI, log: GenerationLog) -> None:
    long_prompt = "Summarize this text in one sentence. " + " ".join(
        f"Ship {n} sailed from port {n} with {n} crates of tea." for n in range(1, 25)
    )
    alone = one_at_a_time(client, [LONG_PROMPT, long_prompt], [150, 10])
    mark = log.mark()
    pieces: list[str] = []
    times: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": LONG_PROMPT}],
            max_tokens=150,
            temperature=0,
            stream=True,
        )
        joining: Future[Received] | None = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                times.append(time.monotonic())
                if len(pieces) == 5:  # the first reply is decoding: the long prompt joins now
                    joining = pool.submit(stream_reply, client, long_prompt, 10)
        assert joining is not None
        second = joining.result()
    assert ("".join(pieces), second.text) == tuple(alone)
    join = next(r for r in log.reports(mark) if r.completion_tokens == 10)
    assert join.prompt_tokens > 256  # more than two chunks of a prompt read beside a decoding reply
    assert join.first_token is not None
    # The running reply kept streaming while the long prompt was being read.
    during = [at for at in times if join.started < at < join.first_token]
    assert len(during) >= 2, (join, times)


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
    # (asked for: a reply on /api/chat goes on after its client leaves unless told to cancel)
    body = {"message": LONG_PROMPT, "max_tokens": 400, "temperature": 0, "on_disconnect": "cancel"}
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
