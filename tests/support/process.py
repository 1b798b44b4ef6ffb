"""Start `parley serve` as a real subprocess on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def parley_serve(config: Path, *, ready_timeout: float = 120) -> Iterator[str]:
    """`parley serve --config CONFIG` in a subprocess; yields its base URL once /ready says so."""
    port = free_port()
    process = subprocess.Popen(
        [str(PARLEY), "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base_url, ready_timeout)
        except RuntimeError:
            process.terminate()
            output, _ = process.communicate(timeout=10)
            raise RuntimeError(f"parley serve did not become ready; it printed:\n{output}") from None
        yield base_url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
