"""Limits held across real `parley serve` processes sharing PostgreSQL and Redis, and in one
process without Redis: exact counts, 429s in OpenAI's shape with its headers, the openai client's
own RateLimitError, streams at once, and a token budget concurrent requests can't overrun."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import ws
from tests.support.databases import PostgresUnavailable, create_postgres_database, drop_postgres_database
from tests.support.process import parley_serve, run_parley
from tests.support.redis import REDIS_URL, connected, new_prefix, remove_keys

pytestmark = pytest.mark.slow

SLOW_REPLY = "one slow word after another " * 4  # 28 pieces of 4 characters, 0.1 s apart: about 3 s
MODELS = f"""
[[models]]
name = "echo"
provider = "fake"
limits = {{requests_per_minute = 10, tokens_per_minute = 100000}}

[[models]]
name = "streamed"
provider = "fake"
limits = {{requests_per_minute = 3}}

[[models]]
name = "slow"
provider = "fake"
replies = ["{SLOW_REPLY}"]
delay_ms = 100
limits = {{max_streams = 2}}

[[models]]
name = "budget"
provider = "fake"
replies = ["{SLOW_REPLY}"]
delay_ms = 150
limits = {{daily_tokens = 320}}
"""
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)


def write_config(folder: Path, settings: str) -> Path:
    config = folder / "parley.toml"
    config.write_text(f'data_dir = "{folder}"\n{settings}\n{MODELS}')
    return config


@contextlib.contextmanager
def shared_servers(folder: Path, count: int) -> Iterator[list[str]]:
    """`count` servers sharing a new PostgreSQL database and a Redis key prefix of their own."""
    asyncio.run(_redis_or_skip())
    try:
        database = asyncio.run(create_postgres_database())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    prefix = new_prefix()
    config = write_config(folder, f'database_url = "{database}"\nredis_url = "{REDIS_URL}"\nredis_prefix = "{prefix}"')
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(parley_serve(config)) for _ in range(count)]
    finally:
        asyncio.run(remove_keys(prefix))
        asyncio.run(drop_postgres_database(database))


async def _redis_or_skip() -> None:
    await (await connected()).aclose()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with shared_servers(tmp_path_factory.mktemp("shared-limits"), 3) as urls:
        yield urls


def chat(url: str, model: str, **body: object) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=30)


def spread(urls: list[str], count: int, model: str, **body: object) -> list[httpx.Response]:
    """`count` requests at once, taking turns over the servers."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: chat(urls[i % len(urls)], model, **body), range(count)))


def assert_exactly_10_of_30(urls: list[str]) -> None:
    replies = spread(urls, 30, "echo")
    ok = [reply for reply in replies if reply.status_code == 200]
    refused = [reply for reply in replies if reply.status_code == 429]
    assert len(ok) == 10 and len(refused) == 20, [reply.status_code for reply in replies]
    # Every success saw its own place in the one shared count: 9 left, then 8, ... then 0.
    assert sorted(int(reply.headers["x-ratelimit-remaining-requests"]) for reply in ok) == list(range(10))
    for reply in ok:
        assert reply.headers["x-ratelimit-limit-requests"] == "10"
        assert reply.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(reply.headers["x-ratelimit-remaining-tokens"]) < 100000
    for reply in refused:
        error = reply.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_requests"
        assert "requests per minute" in error["message"]
        assert 1 <= int(reply.headers["retry-after"]) <= 120
        assert all(name in reply.headers for name in RATE_HEADERS)
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"


def test_three_instances_allow_exactly_10_of_30_requests_to_a_model_limited_to_10_a_minute(
    three: list[str],
) -> None:
    assert_exactly_10_of_30(three)


def test_streams_and_the_chat_api_carry_the_headers_and_the_openai_client_sees_rate_limit_error(
    three: list[str],
) -> None:
    body = {"model": "streamed", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{three[0]}/v1/chat/completions", json=body, timeout=30) as stream:
        assert stream.status_code == 200
        assert stream.headers["x-ratelimit-remaining-requests"] == "2"
        assert "data: [DONE]" in stream.read().decode()
    reply = httpx.post(f"{three[1]}/api/chat", json={"message": "hi", "model": "streamed", "stream": False})
    assert reply.status_code == 200 and reply.headers["x-ratelimit-remaining-requests"] == "1"
    client = openai.OpenAI(base_url=f"{three[2]}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="streamed", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="streamed", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "rate_limit_requests"
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "3"
    unlimited = httpx.get(f"{three[0]}/v1/models")  # not a generation: no limit, no headers
    assert unlimited.status_code == 200 and "x-ratelimit-limit-requests" not in unlimited.headers


def test_concurrent_streams_are_limited_across_instances(three: list[str]) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with contextlib.ExitStack() as open_streams:
        reading = []  # (kept: an abandoned iterator, collected, would close its stream)
        for url in three[:2]:
            stream = open_streams.enter_context(httpx.stream("POST", f"{url}/v1/chat/completions", json=body))
            assert stream.status_code == 200
            reading.append(stream.iter_bytes())
            next(reading[-1])  # streaming on its own server
        third = chat(three[2], "slow")
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
    # Both clients left: their servers cancel the replies and free the slots.
    assert _eventually_ok(three[2], "slow")


def _eventually_ok(url: str, model: str, attempts: int = 100) -> bool:
    for _ in range(attempts):
        reply = chat(url, model, max_tokens=1)
        if reply.status_code == 200:
            return True
        assert reply.json()["error"]["code"] == "too_many_streams"
        httpx.get(f"{url}/health")  # (a request's round trip between attempts: no sleeping)
    return False


def test_concurrent_requests_across_instances_cannot_overrun_a_token_budget(three: list[str]) -> None:
    # Each reserves its prompt ("hello": 2 + 4 tokens estimated) and max_tokens 42: 48 of the 320.
    # The replies take about four seconds, so all 24 requests are decided while 6 are running.
    replies = spread(three, 24, "budget", max_tokens=42)
    statuses = [reply.status_code for reply in replies]
    assert statuses.count(200) == 6 and statuses.count(429) == 18, statuses
    refused = next(reply for reply in replies if reply.status_code == 429)
    assert refused.json()["error"]["code"] == "daily_budget_exceeded"
    spent = sum(reply.json()["usage"]["total_tokens"] for reply in replies if reply.status_code == 200)
    assert spent <= 320
    # Settled against what they used (a few tokens each), the budget takes more requests.
    assert chat(three[1], "budget", max_tokens=42).status_code == 200


def test_one_instance_without_redis_counts_the_same_in_process(tmp_path: Path) -> None:
    with parley_serve(write_config(tmp_path, "")) as url:
        assert_exactly_10_of_30([url])
        # The stored-conversation routes pass the same gate: on the WebSocket, an error frame.
        with ws.socket(url, ws.new_session()) as socket:
            frames = ws.chat(socket, "one more", model="echo")
        ws.assert_error(frames[-1], "rate_limit_requests", "rate_limit_error")
        refused = httpx.post(f"{url}/api/chat", json={"message": "and here", "model": "echo"})
        assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_shared_postgresql_database_with_limits_and_no_redis_refuses_to_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'database_url = "postgresql://postgres@127.0.0.1:5432/test"')
    result = run_parley("serve", "--config", str(config))
    said = " ".join(result.stderr.split())  # (unwrapped)
    assert result.returncode == 2, said
    assert "models echo, streamed, slow, budget have limits" in said and "set redis_url" in said
