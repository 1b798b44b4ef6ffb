"""What the server benchmarks share: a fake upstream, `parley serve` processes, and the load loop.

- `fake_upstream(chunks)`: a fast OpenAI-compatible upstream (a raw asyncio server in a child
  process, this file run with `--serve-upstream`) that answers every request with the same
  streamed reply of `chunks` content chunks, whatever was asked.
- `parley_server(...)`: a real `parley serve` in front of it (optionally another checkout's
  `src/`), ready when it yields; `settings` adds lines to its TOML (a store, for instance).
- `throughput(requests, ...)`: one client per request function, back to back, with a warm-up
  and a measured window; completions inside the window count, and the watched process's CPU
  time (from /proc) is divided among them.

Not a benchmark itself: run alone, it says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import uvloop

DONE = b"data: [DONE]\n\n"

# --- the fake upstream ---------------------------------------------------------------------------


def upstream_reply(content_chunks: int) -> list[bytes]:
    """An OpenAI-style streamed reply, as HTTP/1.1 chunked-encoding pieces (one write each)."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "bench"}

    def event(payload: dict[str, object]) -> bytes:
        return b"data: " + json.dumps({**head, **payload}, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [event(choice({"role": "assistant", "content": ""}))]
    events += [event(choice({"content": f"tok{i} "})) for i in range(content_chunks)]
    events.append(event(choice({}, "stop")))
    usage = {"prompt_tokens": 12, "completion_tokens": content_chunks, "total_tokens": 12 + content_chunks}
    events.append(event({"choices": [], "usage": usage}))
    events.append(DONE)
    status = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    return [status] + [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events] + [b"0\r\n\r\n"]


class _UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough of it: answers every request with the fixed stream."""

    def __init__(self, reply: list[bytes]) -> None:
        self._reply = reply
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end].lower()
            match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            end = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < end:
                return
            self._buffer = self._buffer[end:]
            for piece in self._reply:
                self._transport.write(piece)


async def serve_upstream(content_chunks: int) -> None:
    """Serve the fake upstream, print its port, and stop when stdin closes (or after 10 minutes)."""
    loop = asyncio.get_running_loop()
    reply = upstream_reply(content_chunks)
    server = await loop.create_server(lambda: _UpstreamProtocol(reply), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"port {port}", flush=True)
    # Lives until the parent closes our stdin (or dies); bounded anyway, so nothing lingers.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), timeout=600)
    server.close()


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def fake_upstream(content_chunks: int) -> Iterator[tuple[int, int]]:
    """Yield (port, pid) of the fake upstream process."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstream", "--chunks", str(content_chunks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("port "):
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        yield int(line.split()[1]), process.pid
    finally:
        if process.stdin is not None:
            process.stdin.close()
        stop(process)


def _upstream_lines(base_url: str, endpoints: int) -> str:
    if not endpoints:
        return f'base_url = "{base_url}"\n'
    pool = ", ".join(f'{{ base_url = "{base_url}", name = "e{n}" }}' for n in range(endpoints))
    return f"endpoints = [{pool}]\n"


@contextlib.contextmanager
def parley_server(
    upstream_port: int,
    workdir: Path,
    source: Path | None = None,
    settings: str = "",
    model_settings: str = "",
    env: dict[str, str] | None = None,
    endpoints: int = 0,
) -> Iterator[tuple[int, int]]:
    """Yield (port, pid) of a `parley serve` in front of the upstream (from `source` if given).

    `settings` are top-level TOML lines added to its config (e.g. `database_url = "..."`), and
    `model_settings` lines of its model's table (e.g. `limits = {...}`). With `endpoints`, the
    model is a pool of that many endpoints, all on the one upstream.
    """
    if source is not None and not (source / "parley" / "__init__.py").is_file():
        # PYTHONPATH would skip it quietly and run this checkout's code under the other's name.
        raise RuntimeError(f"{source} is not a src/ folder with the parley package in it")
    workdir.mkdir(exist_ok=True)
    config = workdir / "parley.toml"
    config.write_text(
        'log_level = "warning"\n'
        + settings
        + "[[models]]\n"
        + 'name = "bench"\n'
        + 'provider = "openai"\n'
        + _upstream_lines(f"http://127.0.0.1:{upstream_port}/v1", endpoints)
        + model_settings
    )
    port = free_port()
    executable = Path(sys.executable).parent / "parley"
    command = [str(executable)] if executable.exists() and source is None else [sys.executable, "-m", "parley.cli"]
    child_env = {**os.environ, **(env or {})}
    if source is not None:
        child_env["PYTHONPATH"] = str(source.resolve())
    log_path = workdir / "parley.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=child_env,
        )
    try:
        asyncio.run(_wait_ready(f"http://127.0.0.1:{port}/ready", process, log_path))
        yield port, process.pid
    finally:
        stop(process)


async def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
            await asyncio.sleep(0.1)
    log = log_path.read_text()  # noqa: ASYNC240 - the run is over; nothing else waits on the loop
    raise RuntimeError(f"parley did not become ready; its log:\n{log[-2000:]}")


# --- load ----------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A reply that was not what the benchmark expects (status, shape, an unfinished stream)."""


# One whole request on the shared session; raises BenchError (or aiohttp's errors) on a bad reply.
Request = Callable[[aiohttp.ClientSession], Awaitable[object]]
FAILURES = (BenchError, aiohttp.ClientError, TimeoutError)


@dataclass
class Throughput:
    requests_per_second: float
    completed: int
    client_cpu_percent: float  # this process, the load generator
    cpu_ms_per_request: float | None = None  # of the process watched (Parley); None for the direct runs
    cpu_percent: float | None = None
    errors: int = 0  # failed requests (not counted as completed), wherever they ended
    first_error: BaseException | None = None


async def throughput(
    requests: Sequence[Request], duration: float, warmup: float, max_requests: int, watch_pid: int | None
) -> Throughput:
    """One client per request function, back to back; completions inside the window count.

    A failed request is counted in `errors` (the first kept) and its client goes on.
    """
    concurrency = len(requests)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    issued = 0
    completed = 0
    errors: list[BaseException] = []
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration
    cpu: dict[str, float | None] = {}
    client_cpu: dict[str, float] = {}

    async def client(request: Request) -> None:
        nonlocal issued, completed
        while loop.time() < window_end and issued < max_requests:
            issued += 1
            try:
                await request(session)
            except FAILURES as exc:
                errors.append(exc)
                continue
            if window_start <= loop.time() <= window_end:
                completed += 1

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        client_cpu["start"] = time.process_time()
        cpu["start"] = cpu_seconds(watch_pid) if watch_pid is not None else None
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        client_cpu["end"] = time.process_time()
        cpu["end"] = cpu_seconds(watch_pid) if watch_pid is not None else None

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with asyncio.timeout(warmup + duration + 60):
            await asyncio.gather(sample_cpu(), *(client(request) for request in requests))
    result = Throughput(
        completed / duration,
        completed,
        (client_cpu["end"] - client_cpu["start"]) * 100 / duration,
        errors=len(errors),
        first_error=errors[0] if errors else None,
    )
    start, end = cpu.get("start"), cpu.get("end")
    if start is not None and end is not None and completed:
        result.cpu_ms_per_request = (end - start) * 1000 / completed
        result.cpu_percent = (end - start) * 100 / duration
    return result


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-upstream", action="store_true", help="serve the fake upstream (for the benchmarks)")
    parser.add_argument("--chunks", type=int, default=48, help="content chunks per reply (default 48)")
    args = parser.parse_args()
    if args.serve_upstream:
        uvloop.run(serve_upstream(args.chunks))
    else:
        print("bench/harness.py is shared by the server benchmarks; run bench/overhead.py or bench/conversations.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
