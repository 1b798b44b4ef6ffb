"""The access issue's promises for keys, on three `parley serve` processes sharing PostgreSQL and
Redis: a key's rate limit is exact across them, a key's token budget holds under concurrency, one
key's conversations are invisible to another on every route (WebSocket included), and the metrics
count what happened."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from tests.support.databases import PostgresUnavailable, create_postgres_database, drop_postgres_database
from tests.support.process import parley_serve, run_parley

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = secrets.token_urlsafe(32)
ENV = {"PARLEY_ADMIN_KEY": ADMIN_KEY, "PARLEY_KEY_SECRET": secrets.token_urlsafe(32)}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SLOW_REPLY = "one slow word after another " * 4


@dataclass
class Fleet:
    urls: list[str]
    config: Path

    def key(self, name: str, *options: str) -> str:
        made = run_parley("keys", "create", "--config", str(self.config), "--name", name, *options, env=ENV)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    try:
        postgres_url = asyncio.run(create_postgres_database())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    folder = tmp_path_factory.mktemp("fleet")
    prefix = f"parley-test-{uuid.uuid4().hex[:12]}"
    config = folder / "parley.toml"
    config.write_text(
        f'database_url = "{postgres_url}"\ndata_dir = "{folder}"\n'
        f'redis_url = "{REDIS_URL}"\nredis_prefix = "{prefix}"\n'
        '[[models]]\nname = "echo"\nprovider = "fake"\n'
        f'[[models]]\nname = "slow"\nprovider = "fake"\nreplies = ["{SLOW_REPLY}"]\ndelay_ms = 150\n'
    )
    try:
        with (
            parley_serve(config, env=ENV) as one,
            parley_serve(config, env=ENV) as two,
            parley_serve(config, env=ENV) as three,
        ):
            yield Fleet([one, two, three], config)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        asyncio.run(drop_postgres_database(postgres_url))


def chat(url: str, key: str, model: str = "echo", **body: object) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hello"}], **body}
    return httpx.post(
        f"{url}/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_a_key_limited_to_10_a_minute_gets_exactly_10_of_30_across_three_servers(fleet: Fleet) -> None:
    key = fleet.key("ten-a-minute", "--rpm", "10")
    with ThreadPoolExecutor(max_workers=30) as pool:
        replies = list(pool.map(lambda i: chat(fleet.urls[i % 3], key), range(30)))
    ok = [reply for reply in replies if reply.status_code == 200]
    refused = [reply for reply in replies if reply.status_code == 429]
    assert (len(ok), len(refused)) == (10, 20), [reply.status_code for reply in replies]
    assert sorted(int(reply.headers["x-ratelimit-remaining-requests"]) for reply in ok) == list(range(10))
    for reply in refused:
        assert reply.json()["error"]["code"] == "rate_limit_requests" and int(reply.headers["retry-after"]) >= 1
        assert reply.headers["x-ratelimit-limit-requests"] == "10"
    # Another key is not held back by this one's limit.
    assert chat(fleet.urls[0], fleet.key("unlimited")).status_code == 200
    # The refusals are counted by the metrics of the servers that made them, under the key's name.
    refusals = 0.0
    for url in fleet.urls:
        text = httpx.get(f"{url}/metrics", headers=ADMIN).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "parley_rate_limited_total" and sample.labels.get("key") == "ten-a-minute":
                    refusals += sample.value
    assert refusals == 20


def test_concurrent_requests_cannot_overrun_a_keys_daily_budget(fleet: Fleet) -> None:
    # Each request reserves its prompt (about 6 tokens) plus max_tokens 40: a 150-token budget
    # admits at most three at once, whatever the interleaving over the servers.
    key = fleet.key("small-budget", "--daily-tokens", "150")
    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(lambda i: chat(fleet.urls[i % 3], key, "slow", max_tokens=40), range(12)))
    ok = [reply for reply in replies if reply.status_code == 200]
    assert 1 <= len(ok) <= 3, [reply.status_code for reply in replies]
    spent = sum(reply.json()["usage"]["total_tokens"] for reply in ok)
    assert spent <= 150
    for reply in replies:
        if reply.status_code != 200:
            assert (reply.status_code, reply.json()["error"]["code"]) == (429, "daily_budget_exceeded")


def test_one_keys_conversations_are_invisible_to_another_on_every_route(fleet: Fleet) -> None:
    alice, bob = fleet.key("alice-app"), fleet.key("bob-app")
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    first, second, third = fleet.urls
    made = httpx.post(f"{first}/api/chat", json={"message": "my PIN is 4321", "stream": False}, headers=as_alice)
    assert made.status_code == 200, made.text
    conversation = made.json()["conversation_id"]
    missing = httpx.get(f"{second}/api/conversations/conv-{uuid.uuid4().hex}", headers=as_bob)
    for url in fleet.urls:
        seen = httpx.get(f"{url}/api/conversations/{conversation}", headers=as_bob)
        assert seen.status_code == 404 and seen.json()["error"]["code"] == missing.json()["error"]["code"]
        assert "4321" not in seen.text
        listed = httpx.get(f"{url}/api/conversations", headers=as_bob).json()
        assert conversation not in json.dumps(listed)
        exported = httpx.get(f"{url}/api/conversations/{conversation}/export", headers=as_bob)
        assert exported.status_code == 404
        deleted = httpx.delete(f"{url}/api/conversations/{conversation}", headers=as_bob)
        assert deleted.status_code == 404
    continued = httpx.post(
        f"{third}/api/chat",
        json={"message": "what is my PIN?", "conversation_id": conversation, "stream": False},
        headers=as_bob,
    )
    assert continued.status_code == 404 and "4321" not in continued.text
    as_bob_socket = [Subprotocol("parley"), Subprotocol(f"parley.key.{bob}")]
    with connect(second.replace("http://", "ws://") + f"/ws/chat/{conversation}", subprotocols=as_bob_socket) as socket:
        socket.send(json.dumps({"message": "what is my PIN?"}))
        frame = json.loads(socket.recv(timeout=30))
        assert frame["event"] == "error" and frame["data"]["code"] == "conversation_not_found"
    # Alice still has it all, from any server; the admin key sees it too.
    for url in fleet.urls:
        mine = httpx.get(f"{url}/api/conversations/{conversation}", headers=as_alice).json()
        assert mine["messages"][0]["content"] == "my PIN is 4321"
    assert httpx.get(f"{third}/api/conversations/{conversation}", headers=ADMIN).status_code == 200
