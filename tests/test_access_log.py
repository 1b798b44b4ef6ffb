"""One log line per request that names it and can't be forged; an unexpected failure is logged
as a 500, once, and keeps the client's keep-alive connection."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from websockets.sync.client import connect

from parley.api.error_handlers import install_error_handlers
from parley.api.middleware import RequestContextMiddleware
from tests.support.process import parley_process
from tests.support.server import running_parley
from tests.support.upstream import Upstream

ACCESS = "parley.access"
HEX_ID = re.compile(r"[0-9a-f]{32}")


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS and r.getMessage().startswith(request_id)]


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="parley")
    caplog.set_level(logging.INFO, logger="uvicorn")
    return caplog


# -- Parley itself --


@pytest.fixture(scope="module")
def parley() -> Iterator[str]:
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url:
        yield url


def test_a_newline_in_the_path_is_escaped_in_the_one_log_line(
    parley: str, access_log: pytest.LogCaptureFixture
) -> None:
    request_id = f"forge-{uuid.uuid4().hex}"
    reply = httpx.get(parley + "/%0Afake-line%1b[31m", headers={"x-request-id": request_id})
    assert reply.status_code == 404
    (line,) = access_lines(access_log, request_id)
    assert line.startswith(f"{request_id} GET /\\nfake-line\\x1b[31m 404 ")
    assert "\n" not in line
    assert "\x1b" not in line


def test_a_plain_path_is_logged_as_it_is(parley: str, access_log: pytest.LogCaptureFixture) -> None:
    request_id = f"plain-{uuid.uuid4().hex}"
    httpx.get(parley + "/health/caf%C3%A9", headers={"x-request-id": request_id})
    (line,) = access_lines(access_log, request_id)
    assert line.startswith(f"{request_id} GET /health/café 404 ")


@pytest.mark.parametrize("request_id", ["trace-1.2:3_X", "a" * 128])
def test_a_safe_client_request_id_is_kept(parley: str, access_log: pytest.LogCaptureFixture, request_id: str) -> None:
    reply = httpx.get(parley + "/health", headers={"x-request-id": request_id})
    assert reply.headers["x-request-id"] == request_id
    assert len(access_lines(access_log, request_id + " ")) == 1


@pytest.mark.parametrize("sent", [b"two words", b"a\tb", b"id/with/slashes", b"quote'", b"a" * 129, "é".encode()])
def test_an_unsafe_client_request_id_is_replaced(
    parley: str, access_log: pytest.LogCaptureFixture, sent: bytes
) -> None:
    reply = httpx.get(parley + "/health", headers={b"x-request-id": sent})
    assert reply.status_code == 200
    given = reply.headers["x-request-id"]
    assert HEX_ID.fullmatch(given), given
    (line,) = access_lines(access_log, given)
    assert line.startswith(f"{given} GET /health 200 ")


def test_parley_serve_writes_forged_text_as_one_escaped_line(upstream: Upstream, tmp_path: Path) -> None:
    """The real process, with its own log format: the path's newline and the upstream's error body's
    newlines stay inside their lines."""
    config = tmp_path / "parley.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\nstream_head_wait_seconds = 5.0\n\n'
        f'[[models]]\nname = "broken"\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
        'model = "status-500-leaky"\n'
    )
    with parley_process(config) as server:
        httpx.get(server.url + "/%0Afake-line", headers={"x-request-id": "forged-path"})
        body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"x-request-id": "broken-upstream"})
        assert reply.status_code == 502
        deadline = time.monotonic() + 15
        while "broken-upstream POST" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = server.output().splitlines()
    assert not [line for line in lines if line.startswith(("fake-line", "  File", "OSError"))], lines
    (path_line,) = [line for line in lines if "forged-path" in line]
    assert "forged-path GET /\\nfake-line 404" in path_line
    (upstream_line,) = [line for line in lines if "broken-upstream upstream" in line]
    assert "WARNING" in upstream_line
    assert 'answered 500: Traceback (most recent call last):\\n  File "/srv/internal/app.py"' in upstream_line


# -- an unexpected exception, in a small app around the same middleware and handlers --


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=10_000)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, int]:
        assert request.client is not None
        return {"port": request.client.port}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom: internal detail")

    @app.get("/boom-mid-stream")
    async def boom_mid_stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first part\n"
            raise RuntimeError("kaboom after the head")

        return StreamingResponse(body(), media_type="text/plain")

    @app.websocket("/ws")
    async def hello(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello")
        await socket.close(code=1000)

    return app


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    # log_config=None: uvicorn's own loggers propagate, so the test sees whether uvicorn logged a traceback.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def small_app() -> Iterator[str]:
    with serving(failing_app()) as url:
        yield url


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_500_is_logged_once_as_500_and_the_connection_serves_the_next_request(
    small_app: str, access_log: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=small_app, timeout=30) as http:
        before = http.get("/whoami").json()["port"]
        reply = http.get("/boom", headers={"x-request-id": "boom-1"})
        after = http.get("/whoami")
    assert reply.status_code == 500
    assert reply.json() == {
        "error": {
            "message": "internal error; the server log has the details under request id boom-1",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert after.status_code == 200
    assert after.json()["port"] == before, "the next request came on a new connection"
    (line,) = access_lines(access_log, "boom-1")
    assert line.startswith("boom-1 GET /boom 500 ")
    (failure,) = error_records(access_log)
    assert failure.getMessage() == "boom-1 unhandled error on GET /boom"
    assert failure.exc_info is not None
    assert str(failure.exc_info[1]) == "kaboom: internal detail"


def test_a_failure_after_the_head_is_logged_once_and_the_reply_is_cut(
    small_app: str, access_log: pytest.LogCaptureFixture
) -> None:
    with httpx.Client(base_url=small_app, timeout=30) as http:
        with http.stream("GET", "/boom-mid-stream") as reply:
            assert reply.status_code == 200
            # A body that ends without its last chunk: the client can tell it is incomplete.
            with pytest.raises(httpx.RemoteProtocolError):
                reply.read()
        assert http.get("/whoami").status_code == 200
    request_id = reply.headers["x-request-id"]
    (line,) = access_lines(access_log, request_id)
    assert line.startswith(f"{request_id} GET /boom-mid-stream 200 ")
    tracebacks = [r for r in error_records(access_log) if r.exc_info]
    assert len(tracebacks) == 1
    assert tracebacks[0].getMessage() == f"{request_id} unhandled error on GET /boom-mid-stream"


def test_a_websocket_gets_a_request_id_and_a_log_line(small_app: str, access_log: pytest.LogCaptureFixture) -> None:
    url = small_app.replace("http://", "ws://") + "/ws"
    with connect(url, additional_headers={"x-request-id": "socket-1"}, open_timeout=15) as ws:
        assert ws.response is not None
        assert ws.response.headers["x-request-id"] == "socket-1"
        assert ws.recv(timeout=15) == "hello"
    deadline = time.monotonic() + 15
    while not access_lines(access_log, "socket-1") and time.monotonic() < deadline:
        time.sleep(0.02)
    (line,) = access_lines(access_log, "socket-1")
    assert line.startswith("socket-1 WEBSOCKET /ws 1000 ")
