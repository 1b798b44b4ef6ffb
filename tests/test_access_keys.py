"""API keys end to end: `parley keys` in a subprocess, a real `parley serve` requiring keys, and
the official `openai` client and plain HTTP calling it."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.process import ServerProcess, parley_process, run_parley

ADMIN_KEY = secrets.token_urlsafe(32)
KEY_PATTERN = re.compile(r"^pk-[A-Za-z0-9_-]{43}$")


def _config(folder: Path) -> Path:
    config = folder / "parley.toml"
    config.write_text(
        f'data_dir = "{folder / "data"}"\n'
        '[[models]]\nname = "echo"\nprovider = "fake"\n'
        '[[models]]\nname = "other"\nprovider = "fake"\nreplies = ["from the other model"]\n'
        '[[agents]]\nname = "pirate"\nsystem_prompt = "Arr."\nmodel = "echo"\n'
        '[[agents]]\nname = "tutor"\nsystem_prompt = "Teach."\nmodel = "echo"\n'
    )
    return config


def create_key(config: Path, *args: str) -> str:
    done = run_parley("keys", "create", "--config", str(config), *args)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert KEY_PATTERN.match(key), done.stdout
    return key


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def keys(folder: Path) -> dict[str, str]:
    """Keys made with `parley keys create` before the server starts."""
    config = _config(folder)
    return {
        "full": create_key(config, "--name", "full"),
        "echo-only": create_key(config, "--name", "echo-only", "--models", "echo", "--agents", "pirate"),
        "to-revoke": create_key(config, "--name", "to-revoke", "--rpm", "10"),
    }


@pytest.fixture(scope="module")
def server(folder: Path, keys: dict[str, str]) -> Iterator[ServerProcess]:
    with parley_process(_config(folder), env={"PARLEY_ADMIN_KEY": ADMIN_KEY}) as process:
        yield process


def client(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_the_key_is_printed_once_and_only_its_keyed_hash_is_stored(folder: Path, keys: dict[str, str]) -> None:
    listed = run_parley("keys", "list", "--config", str(_config(folder)))
    assert listed.returncode == 0, listed.stderr
    for name, key in keys.items():
        assert name in listed.stdout
        assert key[:12] in listed.stdout  # the prefix, to recognise it by
        assert key not in listed.stdout
    database = (folder / "data" / "parley.db").read_bytes()
    assert all(key.encode() not in database and key[12:].encode() not in database for key in keys.values())
    secret = folder / "data" / "key-secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_the_openai_client_works_unchanged_with_a_key(server: ServerProcess, keys: dict[str, str]) -> None:
    reply = client(server, keys["full"]).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello with a key"}]
    )
    assert reply.choices[0].message.content == "hello with a key"
    streamed = client(server, keys["full"]).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "and streamed"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == "and streamed"


def test_a_wrong_key_is_the_openai_clients_authentication_error(server: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(server, "pk-" + secrets.token_urlsafe(32)).models.list()
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):  # another vendor's key, as a client left configured might send
        client(server, "sk-proj-something").chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}]
        )


def test_without_a_key_every_route_but_health_ready_and_docs_answers_401(server: ServerProcess) -> None:
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/chat"),
        ("GET", "/api/conversations"),
        ("GET", "/api/admin/keys"),
        ("POST", "/chat"),
        ("GET", "/"),
        ("GET", "/nowhere"),
    ):
        reply = httpx.request(method, f"{server.url}{path}", json={})
        assert reply.status_code == 401, (path, reply.text)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "missing_api_key")
        assert set(error) == {"message", "type", "param", "code"}
    for path in ("/health", "/ready", "/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    docs = httpx.get(f"{server.url}/docs").text
    asset = re.search(r'src="(/static-offline-docs/[^"]+)"', docs)
    assert asset is not None and httpx.get(f"{server.url}{asset[1]}").status_code == 200


def test_the_key_may_come_as_x_api_key(server: ServerProcess, keys: dict[str, str]) -> None:
    reply = httpx.get(f"{server.url}/v1/models", headers={"x-api-key": keys["full"]})
    assert reply.status_code == 200
    listed = [model["id"] for model in reply.json()["data"]]
    assert [name for name in listed if not name.startswith("agent:")] == ["echo", "other"]


def test_a_key_uses_only_its_models_and_agents(server: ServerProcess, keys: dict[str, str]) -> None:
    limited = client(server, keys["echo-only"])
    assert [model.id for model in limited.models.list() if not model.id.startswith("agent:")] == ["echo"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        limited.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_allowed"
    headers = {"Authorization": f"Bearer {keys['echo-only']}"}
    pirate = httpx.post(
        f"{server.url}/api/chat", headers=headers, json={"message": "ahoy", "agent": "pirate", "stream": False}
    )
    assert pirate.status_code == 200, pirate.text
    tutor = httpx.post(
        f"{server.url}/api/chat", headers=headers, json={"message": "teach", "agent": "tutor", "stream": False}
    )
    assert tutor.status_code == 403
    assert tutor.json()["error"]["code"] == "agent_not_allowed"
    other = httpx.post(
        f"{server.url}/api/chat", headers=headers, json={"message": "x", "model": "other", "stream": False}
    )
    assert (other.status_code, other.json()["error"]["type"]) == (403, "permission_error")


def test_a_bad_end_user_is_a_400_not_a_500(server: ServerProcess, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['full']}", "X-Parley-User": "x" * 500}
    reply = httpx.get(f"{server.url}/v1/models", headers=headers)
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_end_user"
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "user": "u" * 129}
    reply = httpx.post(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['full']}"}, json=body
    )
    assert reply.status_code == 400
    body["user"] = "alice@example.com"
    reply = httpx.post(
        f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['full']}"}, json=body
    )
    assert reply.status_code == 200


def test_the_admin_api_manages_keys_and_changes_hold_at_once(server: ServerProcess) -> None:
    url = f"{server.url}/api/admin/keys"
    created = httpx.post(
        url, headers=admin(), json={"name": "made-by-api", "requests_per_minute": 5, "models": ["echo"]}
    )
    assert created.status_code == 201, created.text
    made = created.json()
    key = made["key"]
    assert KEY_PATTERN.match(key) and made["prefix"] == key[:12] and made["status"] == "active"
    as_key = {"Authorization": f"Bearer {key}"}
    listed_models = httpx.get(f"{server.url}/v1/models", headers=as_key).json()["data"]
    assert [m["id"] for m in listed_models if m["owned_by"] != "parley:agent"] == ["echo"]

    listed = httpx.get(url, headers=admin())
    assert listed.status_code == 200
    assert key not in listed.text and "hash" not in listed.text
    assert "made-by-api" in [entry["name"] for entry in listed.json()["data"]]
    one = httpx.get(f"{url}/{made['id']}", headers=admin()).json()
    assert (one["name"], one["requests_per_minute"], one["models"]) == ("made-by-api", 5, ["echo"])
    assert "key" not in one

    changed = httpx.patch(f"{url}/{made['id']}", headers=admin(), json={"models": None, "tokens_per_minute": 1000})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["models"], changed.json()["requests_per_minute"], changed.json()["tokens_per_minute"]) == (
        None,
        5,
        1000,
    )
    listed_models = httpx.get(f"{server.url}/v1/models", headers=as_key).json()["data"]
    assert [m["id"] for m in listed_models if m["owned_by"] != "parley:agent"] == ["echo", "other"]

    assert httpx.post(url, headers=admin(), json={"name": "made-by-api"}).status_code == 409
    unknown = httpx.post(url, headers=admin(), json={"name": "bad-models", "models": ["gpt-99"]})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "models")
    assert httpx.get(f"{url}/key_nope", headers=admin()).status_code == 404

    revoked = httpx.delete(f"{url}/{made['id']}", headers=admin())
    assert (revoked.status_code, revoked.json()["status"]) == (200, "revoked")
    refused = httpx.get(f"{server.url}/v1/models", headers=as_key)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")


def test_only_the_admin_key_reaches_the_admin_api(server: ServerProcess, keys: dict[str, str]) -> None:
    url = f"{server.url}/api/admin/keys"
    as_key = httpx.get(url, headers={"Authorization": f"Bearer {keys['full']}"})
    assert (as_key.status_code, as_key.json()["error"]["type"]) == (403, "permission_error")
    assert httpx.post(url, headers={"x-api-key": keys["full"]}, json={"name": "sneaky"}).status_code == 403
    assert httpx.get(url).status_code == 401


def test_a_revoked_key_is_refused_at_once(server: ServerProcess, keys: dict[str, str]) -> None:
    key = keys["to-revoke"]
    assert client(server, key).models.list().data  # seen, and so cached
    assert httpx.delete(f"{server.url}/api/admin/keys/to-revoke", headers=admin()).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(server, key).models.list()


def test_an_expired_key_is_refused(server: ServerProcess) -> None:
    url = f"{server.url}/api/admin/keys"
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = httpx.post(url, headers=admin(), json={"name": "expired", "expires_at": past}).json()
    assert expired["status"] == "expired"
    assert httpx.get(f"{server.url}/v1/models", headers={"x-api-key": expired["key"]}).status_code == 401
    # A key that expires while cached stops working when it expires, not when its cache entry goes.
    soon = datetime.now(UTC) + timedelta(seconds=2)
    expiring = httpx.post(url, headers=admin(), json={"name": "expiring", "expires_at": soon.isoformat()}).json()
    assert httpx.get(f"{server.url}/v1/models", headers={"x-api-key": expiring["key"]}).status_code == 200
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)  # real time must pass
    assert httpx.get(f"{server.url}/v1/models", headers={"x-api-key": expiring["key"]}).status_code == 401


def test_keys_never_reach_the_log(server: ServerProcess, keys: dict[str, str]) -> None:
    client(server, keys["full"]).models.list()
    log = server.output()
    assert "GET /v1/models 200" in log
    assert ADMIN_KEY not in log
    assert all(key not in log and key[12:] not in log for key in keys.values())


def test_the_openapi_document_says_how_to_send_a_key_and_what_refusals_look_like(server: ServerProcess) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    create = document["paths"]["/api/admin/keys"]["post"]
    assert {"201", "401", "403", "409"} <= set(create["responses"])
    assert create["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "401" in document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "security" not in document["paths"]["/health"]["get"]
