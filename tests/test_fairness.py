"""No single request starves the others: a huge reply streams while small requests are answered.

The fake `echo` model cuts a 2 MB message into 500,000 text events. Sent as one batch, encoding
them held the event loop for seconds, and every other request waited that long. The bound here
compares the two (the slowest small request against the whole huge reply) rather than naming a
number of seconds, so a slow, shared machine does not fail it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import running_parley

HUGE = 2_000_000  # characters: 500,000 events of four


@pytest.fixture(scope="module")
def parley() -> Iterator[str]:
    with running_parley(models=[{"name": "echo", "provider": "fake"}], max_body_bytes=8 * 1024 * 1024) as url:
        yield url


def _chat(text: str, *, stream: bool) -> dict[str, object]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}], "stream": stream}


def test_small_requests_are_answered_while_a_huge_reply_streams(parley: str) -> None:
    huge_done = threading.Event()
    huge: dict[str, object] = {}

    def stream_huge() -> None:
        started = time.monotonic()
        with (
            httpx.Client(base_url=parley, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=_chat("x" * HUGE, stream=True)) as reply,
        ):
            body = b"".join(reply.iter_bytes())
        huge.update(status=reply.status_code, body=body, seconds=time.monotonic() - started)
        huge_done.set()

    streamer = threading.Thread(target=stream_huge, name="huge-reply")
    streamer.start()
    latencies: list[float] = []
    with httpx.Client(base_url=parley, timeout=120) as client:
        while not huge_done.is_set():
            started = time.monotonic()
            reply = client.post("/v1/chat/completions", json=_chat("ping", stream=False))
            latencies.append(time.monotonic() - started)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "ping"
    streamer.join(timeout=120)

    assert huge["status"] == 200
    body = huge["body"]
    assert isinstance(body, bytes) and body.endswith(b"data: [DONE]\n\n")
    assert body.count(b'"content":"xxxx"') == HUGE // 4  # the whole reply came
    seconds = huge["seconds"]
    assert isinstance(seconds, float)
    # Small requests were answered all along the huge reply, none held up for long: here the
    # slowest takes about a tenth of the huge reply's time; sent as one batch, it took 70%.
    assert len(latencies) >= 3, (latencies, seconds)
    assert max(latencies) < seconds / 3, (max(latencies), seconds)
