"""deploy/nginx/parley.conf for real: Debian's nginx with TLS (deploy/tls/make-cert.sh's certificate)
in front of two `parley serve` processes sharing PostgreSQL and Redis, as deploy/compose.yaml runs
them. Streams pass through unbuffered, WebSocket chat works, requests spread over both instances
with their request ids, and a conversation started on one instance continues on the other."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from httpx_sse import connect_sse
from websockets.sync.client import connect

from tests.support.databases import PostgresUnavailable, create_postgres_database, drop_postgres_database
from tests.support.nginx import Nginx, running_nginx
from tests.support.process import ServerProcess, free_port, parley_process

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/8"
# 40 pieces of 3 characters, 75 ms apart: a reply that takes about 3 s from first event to last.
SLOW_REPLY = "one slow word after another, " * 4 + "the end."
SLOW_MODEL = (
    f'[[models]]\nname = "slow"\nprovider = "fake"\nreplies = ["{SLOW_REPLY}"]\nchunk_chars = 3\ndelay_ms = 75\n'
)


@dataclass
class Deployment:
    nginx: Nginx
    instances: list[ServerProcess]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.nginx.https_url, verify=str(self.nginx.certificate), timeout=30)

    def handled_by(self, request_id: str) -> list[int]:
        """Which instances (0, 1) logged a request with this id. A server logs a request once it has
        answered it, so its line may come a moment after the client has the answer: waited for."""
        deadline = time.monotonic() + 10
        while True:
            found = [index for index, server in enumerate(self.instances) if f"{request_id} " in server.output()]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    try:
        postgres_url = asyncio.run(create_postgres_database(prefix="deploy_nginx"))
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    folder = tmp_path_factory.mktemp("nginx-deploy")
    prefix = f"parley-test-deploy-{uuid.uuid4().hex[:12]}"
    config = folder / "parley.toml"
    config.write_text(
        f'database_url = "{postgres_url}"\ndata_dir = "{folder}"\nlog_level = "info"\n'
        f'redis_url = "{REDIS_URL}"\nredis_prefix = "{prefix}"\n'
        '[[models]]\nname = "echo"\nprovider = "fake"\n' + SLOW_MODEL
    )
    try:
        with (
            parley_process(config) as one,
            parley_process(config) as two,
            running_nginx(
                [one.url.removeprefix("http://"), two.url.removeprefix("http://")],
                Path(folder / "nginx"),
                free_port(),
                free_port(),
            ) as nginx,
        ):
            yield Deployment(nginx, [one, two])
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        asyncio.run(drop_postgres_database(postgres_url))


def test_plain_http_is_redirected_to_https(deployment: Deployment) -> None:
    reply = httpx.get(f"{deployment.nginx.http_url}/health?x=1", follow_redirects=False, timeout=10)
    assert reply.status_code == 301
    assert reply.headers["location"] == "https://127.0.0.1/health?x=1"


def test_tls_with_the_generated_certificate_at_1_2_or_newer(deployment: Deployment) -> None:
    with deployment.client() as client:
        reply = client.get("/health")
        assert reply.status_code == 200 and reply.json()["status"] == "healthy"
        assert reply.headers["strict-transport-security"].startswith("max-age=")
    # TLS 1.2 still works for older clients; an unverified certificate is refused.
    context = ssl.create_default_context(cafile=str(deployment.nginx.certificate))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context) as old:
        assert old.get(f"{deployment.nginx.https_url}/health").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{deployment.nginx.https_url}/health", timeout=10)


def test_the_first_sse_event_arrives_long_before_the_reply_ends(deployment: Deployment) -> None:
    with deployment.client() as client:
        started = time.monotonic()
        arrivals: list[tuple[float, str]] = []
        with connect_sse(client, "POST", "/api/chat", json={"message": "go", "model": "slow"}) as source:
            assert source.response.status_code == 200
            for event in source.iter_sse():
                arrivals.append((time.monotonic() - started, event.event))
    first_text = next(at for at, name in arrivals if name == "text_delta")
    ended = arrivals[-1][0]
    assert arrivals[-1][1] == "message_complete", arrivals[-3:]
    # The reply's pieces are written 75 ms apart over about 3 s; buffered, they would come at once.
    assert ended - first_text > 2.0, (first_text, ended)


def test_an_openai_client_streams_through_nginx_unbuffered(deployment: Deployment) -> None:
    http_client = httpx.Client(verify=str(deployment.nginx.certificate))
    client = openai.OpenAI(base_url=f"{deployment.nginx.https_url}/v1", api_key="unused", http_client=http_client)
    started = time.monotonic()
    times: list[float] = []
    text = ""
    for chunk in client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "go"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert text == SLOW_REPLY
    assert times[-1] - times[0] > 2.0, (times[0], times[-1])
    http_client.close()


def test_websocket_chat_over_tls(deployment: Deployment) -> None:
    context = ssl.create_default_context(cafile=str(deployment.nginx.certificate))
    url = deployment.nginx.https_url.replace("https://", "wss://") + f"/ws/chat/ws-{uuid.uuid4().hex}"
    with connect(url, ssl=context, open_timeout=15) as ws:
        for message in ("hello there", "and again"):
            ws.send(json.dumps({"message": message, "model": "echo"}))
            frames: list[dict[str, Any]] = []
            while not frames or frames[-1]["event"] not in ("message_complete", "error"):
                frames.append(json.loads(ws.recv(timeout=15)))
            assert frames[-1]["event"] == "message_complete", frames
            assert message in "".join(f["data"]["text"] for f in frames if f["event"] == "text_delta")


def test_requests_spread_over_both_instances_with_their_request_ids(deployment: Deployment) -> None:
    ids = [f"deploy-{uuid.uuid4().hex}" for _ in range(8)]
    with deployment.client() as client:
        for request_id in ids:
            reply = client.post(
                "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
                headers={"X-Request-ID": request_id},
            )
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-request-id"] == request_id
        # Without one, nginx makes an id, and Parley uses it (the same id in both logs).
        made = client.get("/v1/models").headers["x-request-id"]
    handled = [deployment.handled_by(request_id) for request_id in ids]
    assert all(len(where) == 1 for where in handled), handled
    assert {where[0] for where in handled} == {0, 1}, handled
    assert len(deployment.handled_by(made)) == 1
    deadline = time.monotonic() + 10  # (nginx, too, writes its line once the request is done)
    while f"request_id={made}" not in deployment.nginx.access_log.read_text():
        assert time.monotonic() < deadline, f"nginx never logged request {made}"
        time.sleep(0.05)


def test_a_conversation_started_on_one_instance_continues_on_the_other(deployment: Deployment) -> None:
    with deployment.client() as client:
        first = client.post(
            "/api/chat",
            json={"message": "my name is Ada", "model": "echo", "stream": False},
            headers={"X-Request-ID": (first_id := f"deploy-{uuid.uuid4().hex}")},
        )
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        started_on = deployment.handled_by(first_id)
        # nginx balances on its own: keep going until a turn lands on the other instance.
        for turn in range(6):
            turn_id = f"deploy-{uuid.uuid4().hex}"
            reply = client.post(
                "/api/chat",
                json={"message": f"turn {turn}", "model": "echo", "stream": False, "conversation_id": conversation},
                headers={"X-Request-ID": turn_id},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["conversation_id"] == conversation
            if deployment.handled_by(turn_id) != started_on:
                break
        else:
            pytest.fail("six turns in a row landed on the instance that started the conversation")
        stored = client.get(f"/api/conversations/{conversation}")
    assert stored.status_code == 200
    contents = [message["content"] for message in stored.json()["messages"] if message["role"] == "user"]
    assert contents == ["my name is Ada", *(f"turn {n}" for n in range(turn + 1))]


def test_a_body_over_the_limit_is_refused_in_the_openai_error_shape(deployment: Deployment) -> None:
    with deployment.client() as client:
        reply = client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert reply.status_code == 413
    error = reply.json()["error"]
    assert error["code"] == "payload_too_large" and error["type"] == "invalid_request_error"


def test_json_is_compressed(deployment: Deployment) -> None:
    with deployment.client() as client:
        reply = client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert reply.status_code == 200
    assert reply.headers["content-encoding"] == "gzip"
    assert "paths" in reply.json()
