"""Keys across servers: two `parley serve` processes sharing PostgreSQL and Redis. A key revoked or
changed through one server (or `parley keys`) holds on the other from the moment the change returns."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.databases import drop_postgres_database
from tests.support.process import parley_serve, run_parley
from tests.support.server import running_parley

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = secrets.token_urlsafe(32)
KEY_SECRET = secrets.token_urlsafe(32)
ENV = {"PARLEY_ADMIN_KEY": ADMIN_KEY, "PARLEY_KEY_SECRET": KEY_SECRET}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Servers:
    first: str
    second: str
    config: Path
    prefix: str

    def both(self) -> tuple[str, str]:
        return self.first, self.second


def _config(folder: Path, postgres_url: str, prefix: str) -> Path:
    config = folder / "parley.toml"
    config.write_text(
        f'database_url = "{postgres_url}"\n'
        f'data_dir = "{folder}"\n'
        f'redis_url = "{REDIS_URL}"\n'
        f'redis_prefix = "{prefix}"\n'
        '[[models]]\nname = "echo"\nprovider = "fake"\n'
        '[[models]]\nname = "other"\nprovider = "fake"\n'
    )
    return config


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def servers(postgres_url: str, tmp_path: Path, redis_client: redis.Redis) -> Iterator[Servers]:
    prefix = f"parley-test-{uuid.uuid4().hex[:12]}"  # this test's own channels
    config = _config(tmp_path, postgres_url, prefix)
    with parley_serve(config, env=ENV) as first, parley_serve(config, env=ENV) as second:
        yield Servers(first, second, config, prefix)


def _status(server: str, key: str) -> int:
    return httpx.get(f"{server}/v1/models", headers={"x-api-key": key}).status_code


def _models(server: str, key: str) -> list[str]:
    reply = httpx.get(f"{server}/v1/models", headers={"x-api-key": key})
    assert reply.status_code == 200, reply.text
    return [model["id"] for model in reply.json()["data"] if model["owned_by"] != "parley:agent"]


def _create(server: str, name: str, **fields: object) -> dict[str, str]:
    made = httpx.post(f"{server}/api/admin/keys", headers=ADMIN, json={"name": name, **fields})
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_a_key_revoked_on_one_server_is_refused_at_once_on_the_other(servers: Servers) -> None:
    for round_ in range(5):
        made = _create(servers.first, f"revoked-{round_}")
        assert [_status(server, made["key"]) for server in servers.both()] == [200, 200]  # cached on both
        assert httpx.delete(f"{servers.first}/api/admin/keys/{made['id']}", headers=ADMIN).status_code == 200
        assert [_status(server, made["key"]) for server in (servers.second, servers.first)] == [401, 401]


def test_a_change_on_one_server_holds_at_once_on_the_other(servers: Servers) -> None:
    made = _create(servers.second, "narrowed")
    assert _models(servers.first, made["key"]) == ["echo", "other"]
    narrowed = httpx.patch(f"{servers.second}/api/admin/keys/{made['id']}", headers=ADMIN, json={"models": ["other"]})
    assert narrowed.status_code == 200
    assert _models(servers.first, made["key"]) == ["other"]
    refused = httpx.post(
        f"{servers.first}/v1/chat/completions",
        headers={"x-api-key": made["key"]},
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")


def test_parley_keys_reaches_the_running_servers_at_once(servers: Servers) -> None:
    made = run_parley("keys", "create", "--config", str(servers.config), "--name", "from-cli", env=ENV)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert [_status(server, key) for server in servers.both()] == [200, 200]
    updated = run_parley("keys", "update", "--config", str(servers.config), "from-cli", "--models", "echo", env=ENV)
    assert updated.returncode == 0, updated.stderr
    assert [_models(server, key) for server in servers.both()] == [["echo"], ["echo"]]
    revoked = run_parley("keys", "revoke", "--config", str(servers.config), "from-cli", env=ENV)
    assert revoked.returncode == 0, revoked.stderr
    assert [_status(server, key) for server in servers.both()] == [401, 401]


def test_a_server_that_lost_redis_listens_again_and_revocations_hold(
    servers: Servers, redis_client: redis.Redis
) -> None:
    made = _create(servers.first, "survives-a-reconnect")
    assert [_status(server, made["key"]) for server in servers.both()] == [200, 200]
    listeners = _listeners(redis_client, servers.prefix)
    assert len(listeners) == 2
    for client_id in listeners:
        redis_client.client_kill_filter(_id=client_id)
    deadline = time.monotonic() + 30
    while len(relistening := _listeners(redis_client, servers.prefix) - listeners) < 2:
        assert time.monotonic() < deadline, "the servers did not subscribe again"
        time.sleep(0.05)
    assert len(relistening) == 2
    assert httpx.delete(f"{servers.second}/api/admin/keys/{made['id']}", headers=ADMIN).status_code == 200
    assert [_status(server, made["key"]) for server in servers.both()] == [401, 401]


def _listeners(client: redis.Redis, prefix: str) -> set[str]:
    """The ids of the servers' subscribed connections (named after the test's prefix)."""
    return {
        str(entry["id"])
        for entry in client.client_list()
        if entry.get("name") == f"{prefix}:key-changes" and int(entry.get("sub", 0)) > 0
    }


def test_keys_on_a_shared_store_need_the_shared_secret(postgres_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path, postgres_url, "parley-test-unused")
    without = {"PARLEY_ADMIN_KEY": ADMIN_KEY, "PARLEY_KEY_SECRET": ""}
    refused = run_parley("keys", "create", "--config", str(config), "--name", "x", env=without)
    assert refused.returncode == 1 and "PARLEY_KEY_SECRET" in refused.stderr
    served = run_parley("serve", "--config", str(config), "--port", "1", env=without)
    assert served.returncode == 2
    assert "PARLEY_KEY_SECRET" in served.stderr and "every server" in " ".join(served.stderr.split())


def test_a_cached_key_needs_no_database_and_an_outage_is_a_503(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    models = [{"name": "echo", "provider": "fake"}]
    with running_parley(models=models, database_url=postgres_url, key_cache_seconds=60) as server:
        made = _create(server, "cached")
        assert _status(server, made["key"]) == 200  # looked up once, and cached
        asyncio.run(drop_postgres_database(postgres_url))
        assert _status(server, made["key"]) == 200  # no query: the database is gone
        unseen = httpx.get(f"{server}/v1/models", headers={"x-api-key": "pk-" + "z" * 43})
        assert (unseen.status_code, unseen.json()["error"]["code"]) == (503, "store_unavailable")
