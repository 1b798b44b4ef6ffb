"""The llama.cpp provider's prompt cache, with the real SmolLM2: a conversation's next turn
evaluates only its new tokens, and a history that changed never reuses what no longer matches.

Every reply is compared with the same request on a server whose cache is off: a cache hit
must never change what a user reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.support.llamacpp import GenerationLog, smollm2_server
from tests.support.server import running_parley

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant who answers in one or two sentences."


@dataclass(frozen=True, slots=True)
class Served:
    client: OpenAI
    model: str
    log: GenerationLog

    def reply(self, messages: list[dict[str, str]], max_tokens: int = 24) -> tuple[str, Any]:
        answer = self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
        )
        assert answer.usage is not None
        return answer.choices[0].message.content or "", answer.usage


@pytest.fixture(scope="module")
def cached() -> Iterator[Served]:
    with smollm2_server(parallel=2, cache_slots=3) as (url, log):
        yield Served(OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300), "smollm2", log)


@pytest.fixture(scope="module")
def cold() -> Iterator[Served]:
    """The same model with its cache off: what evaluating every prompt whole gives."""
    with smollm2_server(name="cold", parallel=1, prompt_cache=False) as (url, log):
        yield Served(OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300), "cold", log)


def cached_tokens(usage: Any) -> int:
    details = usage.prompt_tokens_details
    assert details is not None, "the usage reports prompt_tokens_details"
    return int(details.cached_tokens)


def turns(*texts: str) -> list[dict[str, str]]:
    """A conversation: the system prompt, then user and assistant turns alternating."""
    roles = ["user", "assistant"]
    return [{"role": "system", "content": SYSTEM}] + [
        {"role": roles[index % 2], "content": text} for index, text in enumerate(texts)
    ]


def own_reports(log: GenerationLog, mark: int) -> list[Any]:
    return [report for report in log.reports(mark) if report.model == "smollm2"]


def test_the_next_turn_evaluates_only_its_new_tokens(cached: Served, cold: Served) -> None:
    log = cached.log
    first = turns("What is the capital of France?")
    text, usage = cached.reply(first)
    assert text.strip()
    mark = log.mark()
    second = [*first, {"role": "assistant", "content": text}, {"role": "user", "content": "And of Italy?"}]
    text2, usage2 = cached.reply(second)
    # The whole first prompt and the reply are reused; only the new message is read.
    reused = cached_tokens(usage2)
    assert reused >= usage.prompt_tokens + usage.completion_tokens - 2
    assert usage2.prompt_tokens - reused < 20
    # llama.cpp's own counter agrees: the turn decoded its unread prompt and its reply, no more.
    (report,) = own_reports(log, mark)
    before = own_reports(log, 0)[-2]
    assert report.cached_tokens == reused
    assert report.decoded_total - before.decoded_total == report.evaluated_tokens
    assert report.evaluated_tokens <= usage2.prompt_tokens - reused + usage2.completion_tokens
    # And the reply is the one a cold evaluation gives.
    assert text2 == cold.reply(second)[0]


def test_a_retry_reuses_all_but_the_last_prompt_token(cached: Served, cold: Served) -> None:
    messages = turns("Name a colour of the sky.")
    text, _ = cached.reply(messages)
    again, usage = cached.reply(messages)
    assert again == text == cold.reply(messages)[0]
    assert cached_tokens(usage) == usage.prompt_tokens - 1


@pytest.mark.parametrize("change", ["edited", "truncated", "other system prompt"])
def test_a_changed_history_does_not_reuse_what_no_longer_matches(cached: Served, cold: Served, change: str) -> None:
    history = turns("My name is Ada. Remember it.", "Nice to meet you, Ada.", "What is my name?")
    cached.reply(history)  # now cached, with its reply
    if change == "edited":
        # The first message differs after "My name is": only the tokens before the edit match.
        changed = turns("My name is Grace. Remember it.", "Nice to meet you, Ada.", "What is my name?")
        shared = turns("My name is")
    elif change == "other system prompt":
        changed = [{"role": "system", "content": "You are a pirate."}, *history[1:]]
        shared = [{"role": "system", "content": "You are a"}]
    else:
        # Context fitting dropped the oldest exchange: only the system prompt still matches.
        changed = [history[0], *history[3:]]
        shared = [history[0], {"role": "user", "content": ""}]
    text, usage = cached.reply(changed)
    # The shared messages alone, closed and followed by the reply's opening, count more tokens
    # than may be reused: the reuse stops at the first token that differs.
    bound = cold.reply(shared, max_tokens=1)[1].prompt_tokens
    assert cached_tokens(usage) < bound
    assert text == cold.reply(changed)[0]


def test_a_repeat_penalty_changes_a_seeded_reply() -> None:
    """`repeat_penalty` reaches llama.cpp's sampler: the same seeded request answers differently."""
    prompt = [{"role": "user", "content": "Write the word 'yes' twenty times."}]
    texts = []
    for penalty in (1.0, 1.8):
        models = [{"name": "local", "provider": "llamacpp", "context_size": 512, "repeat_penalty": penalty}]
        with running_parley(models=models) as url:
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "local", "messages": prompt, "max_tokens": 40, "temperature": 0.8, "seed": 7},
                timeout=120,
            )
            assert reply.status_code == 200, reply.text
            texts.append(reply.json()["choices"][0]["message"]["content"])
    assert texts[0] != texts[1]
    assert texts[1].lower().count("yes") < texts[0].lower().count("yes")
