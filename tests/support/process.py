"""Start `parley serve` as a real subprocess on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import wait_ready

PARLEY = Path(sys.executable).with_name("parley")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_parley(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short `parley` command to completion and capture what it printed."""
    return subprocess.run(
        [str(PARLEY), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        check=False,
    )


@dataclass
class ServerProcess:
    """A running `parley serve`: its URL, the process (to signal), and what it printed."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)


@contextlib.contextmanager
def parley_process(
    config: Path, *, ready_timeout: float = 120, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[ServerProcess]:
    """`parley serve --config CONFIG` in a subprocess, once /ready says so; stopped afterwards if
    the test didn't stop it. Its output goes to a file (a pipe nobody reads could fill and block it).
    `env`: variables set for it on top of this process's own."""
    port = free_port()
    log = config.with_name(f"parley-{port}.log")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(PARLEY), "serve", "--config", str(config), "--port", str(port), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        try:
            wait_ready(server.url, ready_timeout)
        except RuntimeError:
            process.kill()
            process.wait()
            raise RuntimeError(f"parley serve did not become ready; it printed:\n{server.output()}") from None
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def parley_serve(config: Path, *, ready_timeout: float = 120, env: dict[str, str] | None = None) -> Iterator[str]:
    """`parley serve --config CONFIG` in a subprocess; yields its base URL once /ready says so."""
    with parley_process(config, ready_timeout=ready_timeout, env=env) as server:
        yield server.url


def read_first_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """The first line the process prints on stdout (fails the test if none comes in time)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    buffered = ""
    while time.monotonic() < deadline:
        chunk = process.stdout.readline()
        buffered += chunk or ""
        if buffered.endswith("\n"):
            return buffered
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no line on stdout (exit code {process.poll()}), got {buffered!r}")
