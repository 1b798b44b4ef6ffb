"""Slow or broken clients can't hold a connection: 408 on a late head or body, 431 on a huge head."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

import pytest

from tests.support import ws
from tests.support.server import running_parley

TIMEOUT = 1.0  # both the header and the body timeout of the server under test
WAIT = 15.0  # what a test waits for an answer before failing: far beyond any timeout here
MODELS = [
    {"name": "echo", "provider": "fake"},
    {"name": "slow-echo", "provider": "fake", "chunk_chars": 2, "delay_ms": 10},
]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with running_parley(models=MODELS, header_timeout_seconds=TIMEOUT, body_timeout_seconds=TIMEOUT) as url:
        yield int(url.rsplit(":", 1)[1])


def connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    reply = HTTPResponse(sock)
    reply.begin()
    return reply.status, {name.lower(): value for name, value in reply.getheaders()}, reply.read()


def assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):  # closed with some of what the client sent unread
        assert sock.recv(1) == b"", "the server should have closed the connection"


def assert_error(reply: tuple[int, dict[str, str], bytes], status: int, code: str) -> str:
    got, headers, body = reply
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", code), error
    message: str = error["message"]
    return message


def post(path: str, body: bytes, *, length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: parley\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n"
    return head.encode() + body


CHAT = json.dumps({"message": "hi", "stream": False}).encode()


def test_half_a_header_gets_408_and_the_connection_closes(port: int) -> None:
    with connection(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: parley\r\nX-Trickle: a")
        message = assert_error(read_reply(sock), 408, "request_timeout")
        assert time.monotonic() - started >= 0.8 * TIMEOUT
        assert "head" in message
        assert_closed(sock)


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_body_shorter_than_its_length_gets_408_and_the_connection_closes(port: int, path: str) -> None:
    with connection(port) as sock:
        started = time.monotonic()
        sock.sendall(post(path, CHAT[:10], length=len(CHAT)))
        message = assert_error(read_reply(sock), 408, "request_timeout")
        assert time.monotonic() - started >= 0.8 * TIMEOUT
        assert "body" in message
        assert_closed(sock)


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(port: int) -> None:
    with connection(port) as sock:
        started = time.monotonic()
        assert_closed(sock)
        assert time.monotonic() - started >= 0.8 * TIMEOUT


def test_a_request_in_pieces_within_the_timeouts_is_served(port: int) -> None:
    request = post("/api/chat", CHAT)
    head_end = request.index(b"\r\n\r\n") + 4
    pieces = [
        request[:7],
        request[7:30],
        request[30:head_end],
        request[head_end : head_end + 5],
        request[head_end + 5 :],
    ]
    with connection(port) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)  # a slow client: each piece its own read on the server
        status, _, body = read_reply(sock)
    assert status == 200, body
    assert json.loads(body)["content"] == "hi"


def test_keep_alive_serves_requests_for_longer_than_the_header_timeout(port: int) -> None:
    with connection(port) as sock:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 2.5 * TIMEOUT:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: parley\r\n\r\n")
            status, _, body = read_reply(sock)
            assert status == 200, body
            answered += 1
            time.sleep(TIMEOUT / 4)
    assert answered >= 5


def test_a_reply_streaming_for_longer_than_the_timeouts_is_not_cut(port: int) -> None:
    message = "x" * 300  # 150 pieces 10 ms apart: about 1.5 s of streaming
    body = json.dumps({"message": message, "model": "slow-echo"}).encode()
    with connection(port) as sock:
        sock.sendall(post("/api/chat", body))
        status, headers, streamed = read_reply(sock)
        assert status == 200, streamed
        assert headers["content-type"].startswith("text/event-stream")
        text = "".join(
            json.loads(line[len("data: ") :]).get("text", "")
            for line in streamed.decode().splitlines()
            if line.startswith("data: {")
        )
        assert text == message
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: parley\r\n\r\n")  # the same connection goes on
        assert read_reply(sock)[0] == 200


HEAD = b"GET /health HTTP/1.1\r\nHost: parley\r\nX-Big: "


@pytest.mark.parametrize(
    "pieces",
    [[HEAD + b"a" * 70_000], [HEAD + b"a" * 40_000, b"a" * 30_000 + b"\r\n\r\n"]],
    ids=["unfinished", "finished-in-pieces"],
)
def test_a_head_over_64_kib_gets_431(port: int, pieces: list[bytes]) -> None:
    with connection(port) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)
        message = assert_error(read_reply(sock), 431, "request_head_too_large")
        assert "65536 bytes" in message
        assert_closed(sock)


def test_a_websocket_outlives_the_header_timeout(port: int) -> None:
    with ws.socket(f"http://127.0.0.1:{port}", ws.new_session()) as socket_:
        time.sleep(1.5 * TIMEOUT)  # idle for longer than a request head may take
        frames = ws.chat(socket_, "still here", model="echo")
    assert ws.text_of(frames) == "still here"


def test_a_head_just_under_the_limit_in_pieces_is_served(port: int) -> None:
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))  # about 61 KB
    with connection(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: parley\r\n" + headers[:40_000])
        time.sleep(0.05)
        sock.sendall(headers[40_000:] + b"\r\n")
        assert read_reply(sock)[0] == 200


def test_an_unparsable_request_gets_400_in_the_error_shape(port: int) -> None:
    with connection(port) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert_error(read_reply(sock), 400, "invalid_http_request")
        assert_closed(sock)
