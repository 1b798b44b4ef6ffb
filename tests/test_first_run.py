"""The first run, as a new user meets it: the docs page offline, the bundled model's reply cap,
`parley chat`'s conversation id and commands (typing while a reply streams stays out of it),
`created` on a non-streamed reply, one timestamp format, and validation errors that name every problem."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from parley.config import Settings
from tests.support.process import PARLEY, run_parley
from tests.support.server import running_parley

MODELS: list[dict[str, Any]] = [
    {"name": "echo", "provider": "fake", "chunk_chars": 3},
    # two characters every 40 ms: a reply that is still streaming while the test types
    {"name": "slow", "provider": "fake", "chunk_chars": 2, "delay_ms": 40},
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_parley(models=MODELS) as url:
        yield url


def test_docs_are_served_without_a_cdn(server: str) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(server + page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from another host"
            reply = httpx.get(server + asset)
            assert reply.status_code == 200
            assert len(reply.content) > 1000


def test_the_bundled_model_has_a_reply_cap_and_a_repetition_penalty() -> None:
    [model] = Settings().models
    assert model.provider == "llamacpp"
    assert model.path is None, "the bundled SmolLM2"
    assert model.defaults.max_tokens == 512
    assert model.repeat_penalty > 1


def test_a_non_streamed_reply_has_the_message_start_fields(server: str) -> None:
    streamed = httpx.post(server + "/api/chat", json={"message": "hi"}).text
    start_fields = set(httpx.Response(200, content=streamed.split("data: ", 1)[1].split("\r\n", 1)[0]).json())
    reply = httpx.post(server + "/api/chat", json={"message": "hi", "stream": False}).json()
    assert start_fields <= set(reply)
    assert abs(reply["created"] - time.time()) < 600


def test_conversation_times_have_one_format(server: str) -> None:
    httpx.post(server + "/api/chat", json={"message": "hi", "stream": False, "conversation_id": "times-1"})
    listed = httpx.get(server + "/api/conversations").json()["data"]
    detail = httpx.get(server + "/api/conversations/times-1").json()
    export = httpx.get(server + "/api/conversations/times-1/export").json()
    times = [
        *(item[key] for item in listed for key in ("created_at", "updated_at")),
        detail["created_at"],
        detail["messages"][0]["created_at"],
        export["created_at"],
        export["updated_at"],
        *(message["created_at"] for message in export["messages"]),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", when) for when in times), times
    assert export["messages"][0]["created_at"] == detail["messages"][0]["created_at"]


def test_a_validation_error_names_every_problem(server: str) -> None:
    body = {"model": "echo", "messages": [{"role": "user"}], "max_tokens": "5", "temperature": "hot"}
    error = httpx.post(server + "/v1/chat/completions", json=body).json()["error"]
    assert error["param"] == "messages.0"
    for problem in ("messages.0", "max_tokens", "temperature"):
        assert problem in error["message"]
    assert "more problem" not in error["message"]


def test_chat_shows_the_conversation_id_and_takes_commands(server: str) -> None:
    session = run_parley("chat", "--url", server, stdin="hello there\n/id\n/new\n/id\nagain\n/quit\n")
    assert session.returncode == 0, session.stderr
    ids = re.findall(r"conversation (conv_\w+)", session.stderr)
    assert len(ids) == 2, session.stderr
    assert ids[0] != ids[1], "/new starts another conversation"
    assert f"conversation: {ids[0]}" in session.stdout, "/id names the current conversation"
    assert "conversation: none yet" in session.stdout
    assert "hello there" in session.stdout and "again" in session.stdout
    resumed = run_parley("chat", "--url", server, "--conversation", ids[0], "-m", "third")
    assert resumed.returncode == 0
    messages = httpx.get(f"{server}/api/conversations/{ids[0]}").json()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["hello there", "third"]


# echoed back by the `slow` model in about 2.5 s: time for the test to type while it streams
SENTENCE = " ".join(["the quick brown fox jumps over the lazy dog"] * 3)


def test_typing_while_a_reply_streams_stays_out_of_it(server: str) -> None:
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    process = subprocess.Popen(
        [str(PARLEY), "chat", "--url", server, "--model", "slow"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    seen = b""
    matched = 0  # where the previous marker ended: the next is looked for after it

    def read_until(marker: bytes, timeout: float = 30) -> None:
        """Read until `marker` appears after the previous marker (one read may hold both)."""
        nonlocal seen, matched
        deadline = time.monotonic() + timeout
        while (found := seen.find(marker, matched)) < 0:
            assert time.monotonic() < deadline, f"never saw {marker!r}; got {seen!r}"
            if select.select([leader], [], [], 0.1)[0]:
                seen += os.read(leader, 4096)
        matched = found + len(marker)

    try:
        read_until(b"you> ")
        os.write(leader, SENTENCE.encode() + b"\r")
        read_until(b"slow> ")
        os.write(leader, b"SNEAKY\r")  # typed while the reply streams
        read_until(b"you> ")  # the reply ended, and the prompt is back
        reply_part = seen.split(b"slow> ", 1)[1]
        os.write(leader, b"/id\r")
        read_until(b"conversation: conv_")
        read_until(b"you> ")
        os.write(leader, b"/quit\r")
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert b"SNEAKY" not in reply_part, "typed text was echoed into the reply"
    conversation = re.findall(rb"conversation: (conv_\w+)", seen)[-1].decode()
    messages = httpx.get(f"{server}/api/conversations/{conversation}").json()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [SENTENCE]
