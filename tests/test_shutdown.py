"""A real `parley serve` stopped mid-reply, by SIGTERM and by SIGKILL: nothing a client saw is lost."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.databases import BACKENDS
from tests.support.process import ServerProcess, parley_process

pytestmark = pytest.mark.slow

# The fake model echoes the message a character every 20 ms: 50 characters a second.
CHARS_PER_SECOND = 50
WAIT = 30.0


def write_config(folder: Path, database_url: str, **settings: object) -> Path:
    lines = [f'data_dir = "{folder}"', f'database_url = "{database_url}"']
    lines += [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    lines += ["[[models]]", 'name = "slow"', 'provider = "fake"', "chunk_chars = 1", "delay_ms = 20"]
    config = folder / "parley.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture(params=BACKENDS)
def server_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the server keeps its conversations: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parley.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@dataclass
class SSEReader:
    """Reads one SSE reply in a thread, keeping its events and when the text arrived."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    text_times: list[tuple[float, str]] = field(default_factory=list)
    status: int | None = None
    body: Any = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def text(self) -> str:
        return "".join(piece for _, piece in self.text_times)

    def start(self, url: str, body: dict[str, Any]) -> SSEReader:
        threading.Thread(target=self._read, args=(url, body), daemon=True).start()
        return self

    def _read(self, url: str, body: dict[str, Any]) -> None:
        try:
            with httpx.stream("POST", url, json=body, timeout=WAIT) as reply:
                self.status = reply.status_code
                if reply.headers["content-type"].startswith("application/json"):
                    self.body = json.loads(reply.read())
                    return
                name = "message"
                for line in reply.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                        payload = data if data == "[DONE]" else json.loads(data)
                        self.events.append((name, payload))
                        self._note_text(name, payload)
                        name = "message"
        except httpx.HTTPError as exc:
            self.events.append(("transport_error", repr(exc)))
        finally:
            self.done.set()

    def _note_text(self, name: str, payload: Any) -> None:
        if name == "text_delta":
            self.text_times.append((time.monotonic(), payload["text"]))
        elif isinstance(payload, dict) and payload.get("choices"):
            content = payload["choices"][0]["delta"].get("content")
            if content:
                self.text_times.append((time.monotonic(), content))

    def wait_for_text(self, chars: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.text) < chars:
            assert time.monotonic() < deadline, f"no text came: {self.events[:5]}"
            assert not self.done.is_set(), f"the reply ended early: {self.events[-3:]}"
            time.sleep(0.02)

    def finish(self) -> None:
        assert self.done.wait(WAIT), "the reply did not end"


def stored_reply(url: str, conversation_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/api/conversations/{conversation_id}", timeout=WAIT)
    assert reply.status_code == 200, reply.text
    messages = reply.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    result: dict[str, Any] = messages[1]
    return result


def conversation_of(reader: SSEReader) -> str:
    start = next(payload for name, payload in reader.events if name == "message_start")
    conversation: str = start["conversation_id"]
    return conversation


def test_sigterm_lets_running_replies_finish(tmp_path: Path, server_database: str) -> None:
    message = "a" * 100  # two seconds of reply
    config = write_config(tmp_path, server_database, shutdown_grace_seconds=30)
    with parley_process(config) as server:
        reader = SSEReader().start(f"{server.url}/api/chat", {"message": message, "model": "slow"})
        reader.wait_for_text(10)
        server.process.send_signal(signal.SIGTERM)
        wait_until_refusing_connections(server)
        reader.finish()
        assert server.wait(WAIT) == 0
    assert reader.text == message
    assert reader.events[-1][0] == "message_complete"
    assert reader.events[-1][1]["finish_reason"] == "stop"
    with parley_process(config) as again:
        saved = stored_reply(again.url, conversation_of(reader))
    assert (saved["status"], saved["content"]) == ("complete", message)


def test_past_the_grace_period_every_transport_ends_with_an_error_and_keeps_what_was_sent(
    tmp_path: Path, server_database: str
) -> None:
    message = "b" * 1000  # twenty seconds of reply: far past the grace period
    config = write_config(tmp_path, server_database, shutdown_grace_seconds=1)
    with parley_process(config) as server:
        chat = SSEReader().start(f"{server.url}/api/chat", {"message": message, "model": "slow"})
        openai = SSEReader().start(
            f"{server.url}/v1/chat/completions",
            {"model": "slow", "stream": True, "messages": [{"role": "user", "content": message}]},
        )
        whole = SSEReader().start(f"{server.url}/api/chat", {"message": message, "model": "slow", "stream": False})
        with connect(server.url.replace("http://", "ws://") + "/ws/chat/ws-shutdown", open_timeout=WAIT) as socket:
            socket.send(json.dumps({"message": message, "model": "slow"}))
            ws_frames = [json.loads(socket.recv(WAIT))]
            chat.wait_for_text(5)
            openai.wait_for_text(5)
            idle = httpx.Client(base_url=server.url, timeout=WAIT)
            assert idle.get("/api/conversations").json()["data"], "the keep-alive connection is open"
            wait_for_conversations(idle, 3)  # the non-streamed reply has started too

            server.process.send_signal(signal.SIGTERM)
            not_ready = wait_for_refusal(idle, "/ready")
            assert "shutting down" in not_ready.json()["reason"], "load balancers are told to stop sending"
            refused = wait_for_refusal(idle, "/api/conversations")
            assert refused.json()["error"]["code"] == "server_shutting_down"
            assert refused.headers["retry-after"]
            chat.finish()
            openai.finish()
            whole.finish()
            while True:
                try:
                    ws_frames.append(json.loads(socket.recv(WAIT)))
                except ConnectionClosed as closed:
                    ws_close = closed.rcvd
                    break
        assert server.wait(WAIT) == 0

    assert chat.events[-1][0] == "error"
    assert chat.events[-1][1]["code"] == "server_shutting_down"
    assert openai.events[-1][1]["error"]["code"] == "server_shutting_down"
    assert 0 < len(chat.text) < len(message) and 0 < len(openai.text) < len(message)
    assert whole.status == 503
    assert whole.body["error"]["code"] == "server_shutting_down"
    assert ws_frames[0]["event"] == "message_start"
    assert ws_frames[-1]["event"] == "error" and ws_frames[-1]["data"]["code"] == "server_shutting_down"
    ws_text = "".join(frame["data"]["text"] for frame in ws_frames if frame["event"] == "text_delta")
    assert 0 < len(ws_text) < len(message)
    assert ws_close is not None and (ws_close.code, ws_close.reason) == (1012, "server shutting down")

    with parley_process(config) as again:
        stored_chat = stored_reply(again.url, conversation_of(chat))
        stored_ws = stored_reply(again.url, "ws-shutdown")
        listed = httpx.get(f"{again.url}/api/conversations").json()["data"]
        others = [c["id"] for c in listed if c["id"] not in (conversation_of(chat), "ws-shutdown")]
        assert len(others) == 1
        stored_whole = stored_reply(again.url, others[0])
    for stored, seen in ((stored_chat, chat.text), (stored_ws, ws_text)):
        assert stored["status"] == "failed"
        assert stored["content"] == seen, "what the client saw is what is stored"
        assert "shutting down" in stored["error"]
    assert stored_whole["status"] == "failed"
    assert 0 < len(stored_whole["content"]) < len(message)


def test_a_killed_server_loses_at_most_a_second_of_a_reply(tmp_path: Path, server_database: str) -> None:
    message = "c" * 1000
    config = write_config(tmp_path, server_database, reply_save_seconds=0.5)
    with parley_process(config) as server:
        reader = SSEReader().start(f"{server.url}/api/chat", {"message": message, "model": "slow"})
        reader.wait_for_text(3 * CHARS_PER_SECOND)  # three seconds of reply
        server.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        server.wait(WAIT)
        reader.finish()
    seen_a_second_before = "".join(piece for at, piece in reader.text_times if at <= killed_at - 1.0)
    with parley_process(config) as again:
        saved = wait_for_status(again.url, conversation_of(reader), "failed")
    assert reader.text.startswith(saved["content"])
    assert len(saved["content"]) >= len(seen_a_second_before), "more than the last second was lost"
    assert "server stopped" in saved["error"]


def wait_until_refusing_connections(server: ServerProcess) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
        except httpx.ConnectError:
            return
        time.sleep(0.05)
    raise AssertionError("the server kept accepting connections after SIGTERM")


def wait_for_refusal(client: httpx.Client, path: str) -> httpx.Response:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        reply = client.get(path)
        if reply.status_code == 503:
            return reply
        time.sleep(0.02)
    raise AssertionError("requests on an open connection were still served while draining")


def wait_for_conversations(client: httpx.Client, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(client.get("/api/conversations").json()["data"]) < count:
        assert time.monotonic() < deadline, "the replies did not all start"
        time.sleep(0.05)


def wait_for_status(url: str, conversation_id: str, status: str) -> dict[str, Any]:
    """The reply once it has `status` (on a shared database, a dead server's replies are swept within seconds)."""
    deadline = time.monotonic() + WAIT
    while (saved := stored_reply(url, conversation_id))["status"] != status:
        assert time.monotonic() < deadline, f"the reply stayed {saved['status']}"
        time.sleep(0.2)
    return saved


def test_a_reply_acknowledged_complete_survives_a_kill_right_after(tmp_path: Path, server_database: str) -> None:
    """message_complete means committed: a SIGKILL the moment it arrives loses nothing."""
    config = write_config(tmp_path, server_database)
    replies: list[tuple[str, str]] = []
    with parley_process(config) as server:
        for n in range(5):
            message = f"turn {n} " + "d" * 20
            reader = SSEReader().start(f"{server.url}/api/chat", {"message": message, "model": "slow"})
            reader.finish()
            assert reader.events[-1][0] == "message_complete"
            replies.append((conversation_of(reader), reader.text))
        reader = SSEReader().start(f"{server.url}/api/chat", {"message": "last " + "e" * 20, "model": "slow"})
        deadline = time.monotonic() + WAIT
        while not any(name == "message_complete" for name, _ in reader.events):
            assert time.monotonic() < deadline, f"the reply did not complete: {reader.events[-3:]}"
            time.sleep(0.001)
        server.process.send_signal(signal.SIGKILL)  # the moment the acknowledgement is in
        server.wait(WAIT)
        replies.append((conversation_of(reader), reader.text))
    with parley_process(config) as again:
        for conversation, text in replies:
            saved = stored_reply(again.url, conversation)
            assert (saved["status"], saved["content"]) == ("complete", text)
