"""Parley's streaming overhead: `POST /v1/chat/completions` through Parley vs. straight to its upstream.

Starts a fast fake OpenAI-compatible upstream (a raw asyncio server in a child process that
streams a fixed reply) and a real `parley serve` in front of it, then drives both from this
process with N concurrent aiohttp clients that each read whole streams, and prints:

- requests/s at each concurrency, direct and via Parley, and their ratio, with Parley's CPU
  time per request (from /proc: less noisy than throughput on a shared machine);
- time to first token (first non-empty content chunk) p50/p99 at concurrency 1, direct and
  via Parley, and the time Parley adds.

Targets: at 64 streams Parley keeps at least 40% of the direct throughput, and adds under
1 ms to the time to first token at p50.

    uv run python bench/overhead.py [--duration 2] [--repeat 3] [--ttft-requests 400]

With `--baseline DIR` (the `src` folder of another checkout, e.g. a `git worktree` of an older
commit) a second Parley runs that code with this environment, measured in the same windows,
interleaved: a change's cost, side by side in one run.
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
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import uvloop

TARGETS = {"throughput_ratio_at_64": 0.40, "added_ttft_p50_ms": 1.0}
CHAT_PATH = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
REQUEST_BODY = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say something, quickly."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
FIRST_CONTENT = re.compile(rb'"content":\s*"[^"]')
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


async def _serve_upstream(content_chunks: int) -> None:
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(process: subprocess.Popen[bytes]) -> None:
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
        _stop(process)


@contextlib.contextmanager
def parley_server(upstream_port: int, workdir: Path, source: Path | None = None) -> Iterator[tuple[int, int]]:
    """Yield (port, pid) of a `parley serve` in front of the upstream (from `source` if given)."""
    workdir.mkdir(exist_ok=True)
    config = workdir / "parley.toml"
    config.write_text(
        'log_level = "warning"\n'
        "[[models]]\n"
        'name = "bench"\n'
        'provider = "openai"\n'
        f'base_url = "http://127.0.0.1:{upstream_port}/v1"\n'
    )
    port = _free_port()
    executable = Path(sys.executable).parent / "parley"
    command = [str(executable)] if executable.exists() and source is None else [sys.executable, "-m", "parley.cli"]
    env = {**os.environ, "PYTHONPATH": str(source.resolve())} if source is not None else None
    log_path = workdir / "parley.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    try:
        asyncio.run(_wait_ready(f"http://127.0.0.1:{port}/ready", process, log_path))
        yield port, process.pid
    finally:
        _stop(process)


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
    pass


async def _stream(session: aiohttp.ClientSession, url: str, *, ttft: bool = False) -> tuple[float | None, bytes]:
    """One whole streamed request; returns (seconds to the first content chunk if asked, the tail)."""
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    async with session.post(url, data=REQUEST_BODY, headers=JSON) as reply:
        if reply.status != 200:
            raise BenchError(f"{url} answered {reply.status}: {(await reply.read())[:300]!r}")
        async for chunk in reply.content.iter_any():
            if ttft and first is None and FIRST_CONTENT.search(tail + chunk):
                first = time.perf_counter() - started
            tail = (tail + chunk)[-64:]
    if not tail.endswith(DONE):
        raise BenchError(f"{url}: stream did not end with [DONE]: {tail!r}")
    return first, tail


async def check_reply(base_url: str, content_chunks: int) -> None:
    """One full request, read completely: every content chunk, the usage chunk and [DONE] arrive."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + CHAT_PATH, data=REQUEST_BODY, headers=JSON) as reply,
    ):
        body = await reply.read()
    contents = len(re.findall(rb'"content":\s*"tok\d+ "', body))
    if reply.status != 200 or contents != content_chunks or b'"usage":{' not in body.replace(b" ", b""):
        raise BenchError(f"{base_url}: unexpected reply ({reply.status}, {contents} chunks): {body[:500]!r}")


@dataclass
class Throughput:
    requests_per_second: float
    completed: int
    client_cpu_percent: float  # this process, the load generator
    cpu_ms_per_request: float | None = None  # of the process watched (Parley); None for the direct runs
    cpu_percent: float | None = None


async def throughput(
    base_url: str, concurrency: int, duration: float, warmup: float, max_requests: int, watch_pid: int | None
) -> Throughput:
    """`concurrency` clients stream back to back; completions inside the window count."""
    url = base_url + CHAT_PATH
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    issued = 0
    completed = 0
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration
    cpu: dict[str, float | None] = {}
    client_cpu: dict[str, float] = {}

    async def client() -> None:
        nonlocal issued, completed
        while loop.time() < window_end and issued < max_requests:
            issued += 1
            await _stream(session, url)
            if window_start <= loop.time() <= window_end:
                completed += 1

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        client_cpu["start"] = time.process_time()
        cpu["start"] = _cpu_seconds(watch_pid) if watch_pid is not None else None
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        client_cpu["end"] = time.process_time()
        cpu["end"] = _cpu_seconds(watch_pid) if watch_pid is not None else None

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with asyncio.timeout(warmup + duration + 60):
            await asyncio.gather(sample_cpu(), *(client() for _ in range(concurrency)))
    result = Throughput(completed / duration, completed, (client_cpu["end"] - client_cpu["start"]) * 100 / duration)
    start, end = cpu.get("start"), cpu.get("end")
    if start is not None and end is not None and completed:
        result.cpu_ms_per_request = (end - start) * 1000 / completed
        result.cpu_percent = (end - start) * 100 / duration
    return result


async def time_to_first_token(urls: list[str], requests: int, max_seconds: float) -> list[list[float]]:
    """Alternate the servers one request at a time, so drift in machine load hits all alike."""
    samples: list[list[float]] = [[] for _ in urls]
    connector = aiohttp.TCPConnector(limit=len(urls))
    deadline = time.monotonic() + max_seconds
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url in urls:  # warm the connections
            for _ in range(20):
                await _stream(session, url + CHAT_PATH)
        for _ in range(requests):
            if time.monotonic() > deadline:
                break
            for url, kept in zip(urls, samples, strict=True):
                first, _ = await _stream(session, url + CHAT_PATH, ttft=True)
                if first is None:
                    raise BenchError(f"{url}: no content chunk")
                kept.append(first * 1000)
    return samples


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# --- the run -------------------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace,
    upstream: tuple[int, int],
    parley: tuple[int, int],
    baseline: tuple[int, int] | None = None,
) -> int:
    direct_url = f"http://127.0.0.1:{upstream[0]}"
    servers = [("parley", parley)] + ([("baseline", baseline)] if baseline is not None else [])
    urls = {"direct": direct_url} | {name: f"http://127.0.0.1:{port}" for name, (port, _) in servers}
    for url in urls.values():
        await check_reply(url, args.chunks)

    load_before = _load_average()
    rows: list[tuple[int, dict[str, Throughput]]] = []
    for concurrency in args.concurrency:
        best: dict[str, Throughput] = {}
        sides = [("direct", direct_url, None)] + [(name, urls[name], pid) for name, (_, pid) in servers]
        for _ in range(args.repeat):  # interleaved, best of: noise on a shared machine only slows
            for name, url, pid in sides:
                result = await throughput(url, concurrency, args.duration, args.warmup, args.max_requests, pid)
                if name not in best or result.requests_per_second > best[name].requests_per_second:
                    best[name] = result
            sides.reverse()  # neither side always runs right after the other
        rows.append((concurrency, best))
        print(f"  measured concurrency {concurrency}", file=sys.stderr, flush=True)

    samples = await time_to_first_token(list(urls.values()), args.ttft_requests, args.ttft_max_seconds)
    ttft = dict(zip(urls, samples, strict=True))

    print()
    print(
        f"Parley overhead: streaming POST {CHAT_PATH}, {args.chunks} content chunks + finish + usage + [DONE] per reply"
    )
    print(
        f"fake upstream: raw asyncio (uvloop) server, one process; Parley: `parley serve`, log_level="
        f'"warning" (no per-request log line); {args.duration:g} s windows after {args.warmup:g} s warm-up, '
        f"best of {args.repeat}; {os.cpu_count()} CPUs shared by client, Parley and upstream"
    )
    print(
        f"machine load average (1 min) before/after: {load_before}/{_load_average()}; above ~1 the other "
        "work on the machine shows in these numbers (more in Parley's, which has the more processes to wake)"
    )
    print()
    names = [name for name, _ in servers]
    header = f"{'streams':>7} | {'direct req/s':>12}" + "".join(
        f" | {name + ' req/s':>14} | {'ratio':>6} | {name + ' CPU ms/req':>19} | {'CPU %':>6}" for name in names
    )
    print(header)
    print("-" * len(header))
    for concurrency, best in rows:
        direct = best["direct"]
        line = f"{concurrency:>7} | {direct.requests_per_second:>12.0f}"
        for name in names:
            via = best[name]
            ratio = via.requests_per_second / direct.requests_per_second if direct.requests_per_second else 0.0
            cpu_ms = f"{via.cpu_ms_per_request:.2f}" if via.cpu_ms_per_request is not None else "n/a"
            cpu_pct = f"{via.cpu_percent:.0f}" if via.cpu_percent is not None else "n/a"
            line += f" | {via.requests_per_second:>14.0f} | {ratio:>6.2f} | {cpu_ms:>19} | {cpu_pct:>6}"
        print(line)
    print(
        "client CPU % (direct/"
        + "/".join(names)
        + "): "
        + ", ".join(
            f"{concurrency} streams " + "/".join(f"{best[name].client_cpu_percent:.0f}" for name in ["direct", *names])
            for concurrency, best in rows
        )
    )
    print(
        "(client CPU near 100% in the direct runs means direct throughput is what this one-process "
        "load generator can read; Parley's own aiohttp client to the upstream costs about as much)"
    )
    print()
    print(f"time to first content chunk, 1 stream, {len(ttft['direct'])} requests each (alternating), ms:")
    header = f"{'':>6} | {'direct':>8}" + "".join(f" | {name:>8} | {'added':>8}" for name in names)
    print(header)
    print("-" * len(header))
    added: dict[int, float] = {}
    for p in (50, 99):
        d = percentile(ttft["direct"], p)
        line = f"{'p' + str(p):>6} | {d:>8.3f}"
        for name in names:
            v = percentile(ttft[name], p)
            line += f" | {v:>8.3f} | {v - d:>8.3f}"
            if name == "parley":
                added[p] = v - d
        print(line)
    print()

    verdicts = []
    at_64 = [best for concurrency, best in rows if concurrency == 64]
    if at_64:
        direct, via = at_64[0]["direct"], at_64[0]["parley"]
        ratio = via.requests_per_second / direct.requests_per_second
        target = TARGETS["throughput_ratio_at_64"]
        verdicts.append(
            f"throughput at 64 streams {ratio:.0%} of direct (target >= {target:.0%}): "
            f"{'met' if ratio >= target else 'MISSED'}"
        )
    target = TARGETS["added_ttft_p50_ms"]
    verdicts.append(
        f"added time to first token p50 {added[50]:.3f} ms (target < {target:g} ms): "
        f"{'met' if added[50] < target else 'MISSED'}"
    )
    for verdict in verdicts:
        print(verdict)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per run (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each window (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell, best kept (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="streams (default 1 16 64)")
    parser.add_argument("--chunks", type=int, default=48, help="content chunks per reply (default 48)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per run (default 200000)")
    parser.add_argument("--ttft-requests", type=int, default=400, help="TTFT samples per side (default 400)")
    parser.add_argument("--ttft-max-seconds", type=float, default=20.0, help="TTFT time cap (default 20)")
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to measure side by side")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_upstream:
        uvloop.run(_serve_upstream(args.chunks))
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="parley-bench-") as workdir,
        fake_upstream(args.chunks) as upstream,
        parley_server(upstream[0], Path(workdir) / "parley") as parley,
        contextlib.ExitStack() as others,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        baseline = None
        if args.baseline is not None:
            baseline = others.enter_context(parley_server(upstream[0], Path(workdir) / "baseline", args.baseline))
        return runner.run(bench(args, upstream, parley, baseline))


if __name__ == "__main__":
    sys.exit(main())
