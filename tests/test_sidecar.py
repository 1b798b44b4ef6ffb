"""`parley serve` as a desktop app's sidecar: `--port 0` announces the bound port on stdout's first
line, and `--parent-pid` makes the server exit when its parent process ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parley.sidecar import listening_line, process_alive
from tests.support.process import PARLEY, read_first_line
from tests.support.server import wait_ready

pytestmark = pytest.mark.slow

FAKE_CONFIG = '[[models]]\nname = "echo"\nprovider = "fake"\n'


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "parley.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n{FAKE_CONFIG}')
    return path


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the desktop app: a process that lives until the test ends it."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def start_sidecar(config: Path, parent_pid: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(PARLEY), "serve", "--config", str(config), "--port", "0", "--parent-pid", str(parent_pid)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_port_zero_announces_the_bound_port_and_the_server_answers_there(
    config: Path, parent: subprocess.Popen[bytes]
) -> None:
    server = start_sidecar(config, parent.pid)
    try:
        announced = json.loads(read_first_line(server))
        assert announced["parley"] == "listening"
        assert isinstance(announced["port"], int) and announced["port"] > 0
        assert announced["url"] == f"http://127.0.0.1:{announced['port']}"
        health = httpx.get(f"{announced['url']}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        reply = httpx.post(
            f"{announced['url']}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
    finally:
        server.kill()
        server.wait()


def test_the_port_line_is_not_lost_while_the_local_model_loads(tmp_path: Path, parent: subprocess.Popen[bytes]) -> None:
    # llama.cpp points stdout at /dev/null while it loads a model; the line must still arrive.
    config = tmp_path / "local.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')  # no models: the bundled SmolLM2
    server = start_sidecar(config, parent.pid)
    try:
        url = json.loads(read_first_line(server, timeout=180))["url"]
        wait_ready(url, 180)
        assert httpx.get(f"{url}/health", timeout=10).json()["provider"] == "llamacpp"
    finally:
        server.kill()
        server.wait()


def test_the_server_exits_cleanly_when_its_parent_dies(config: Path, parent: subprocess.Popen[bytes]) -> None:
    server = start_sidecar(config, parent.pid)
    try:
        url = json.loads(read_first_line(server))["url"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        time.sleep(1.5)  # several polls of a living parent: the server stays up
        assert server.poll() is None
        parent.kill()  # not reaped yet: a zombie parent counts as gone too
        assert server.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_parent_that_is_already_gone_stops_the_server_at_once(config: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    server = start_sidecar(config, gone.pid)
    assert server.wait(timeout=60) == 0


def test_the_listening_line_is_one_json_object() -> None:
    assert json.loads(listening_line("127.0.0.1", 5123)) == {
        "parley": "listening",
        "port": 5123,
        "url": "http://127.0.0.1:5123",
    }
    assert json.loads(listening_line("::1", 80))["url"] == "http://[::1]:80"


def test_process_alive_sees_this_process_and_not_an_ended_one() -> None:
    assert process_alive(os.getpid())
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert not process_alive(ended.pid)
