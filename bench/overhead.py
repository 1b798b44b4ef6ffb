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

With `--limits redis://127.0.0.1:6379/0` a third Parley, whose model has limits and a budget
counted in that Redis (a reservation and a settlement per request), runs beside the plain one.

With `--baseline DIR` (the `src` folder of another checkout, e.g. a `git worktree` of an older
commit) a second Parley runs that code with this environment, measured in the same windows,
interleaved: a change's cost, side by side in one run. With `--access` too, a Parley with access
all on runs that code as well (`access-base`).

With `--metrics` another Parley runs with Prometheus metrics on (served on a `metrics_port` of its
own, so no key is needed), measured in the same windows next to the first, which has them off;
its /metrics is read at the end, to show that it counted every request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import redis
import uvloop

# Run as a script, only this folder is on sys.path; the shared code is imported as mypy reads it.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    DONE,
    BenchError,
    Request,
    Throughput,
    fake_upstream,
    free_port,
    load_average,
    parley_server,
    percentile,
    serve_upstream,
    throughput,
)

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


# Headers a server's clients send (a key, for a server that requires one), by its base URL.
CLIENT_HEADERS: dict[str, dict[str, str]] = {}


def _headers(url: str) -> dict[str, str]:
    return CLIENT_HEADERS.get(url.removesuffix(CHAT_PATH), JSON)


async def _stream(session: aiohttp.ClientSession, url: str, *, ttft: bool = False) -> tuple[float | None, bytes]:
    """One whole streamed request; returns (seconds to the first content chunk if asked, the tail)."""
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    async with session.post(url, data=REQUEST_BODY, headers=_headers(url)) as reply:
        if reply.status != 200:
            raise BenchError(f"{url} answered {reply.status}: {(await reply.read())[:300]!r}")
        async for chunk in reply.content.iter_any():
            if ttft and first is None and FIRST_CONTENT.search(tail + chunk):
                first = time.perf_counter() - started
            tail = (tail + chunk)[-64:]
    if not tail.endswith(DONE):
        raise BenchError(f"{url}: stream did not end with [DONE]: {tail!r}")
    return first, tail


def _streamer(url: str) -> Request:
    async def request(session: aiohttp.ClientSession) -> None:
        await _stream(session, url)

    return request


async def check_reply(base_url: str, content_chunks: int) -> None:
    """One full request, read completely: every content chunk, the usage chunk and [DONE] arrive."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + CHAT_PATH, data=REQUEST_BODY, headers=_headers(base_url)) as reply,
    ):
        body = await reply.read()
    contents = len(re.findall(rb'"content":\s*"tok\d+ "', body))
    if reply.status != 200 or contents != content_chunks or b'"usage":{' not in body.replace(b" ", b""):
        raise BenchError(f"{base_url}: unexpected reply ({reply.status}, {contents} chunks): {body[:500]!r}")


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


# --- the run -------------------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace,
    upstream: tuple[int, int],
    parley: tuple[int, int],
    others: Sequence[tuple[str, tuple[int, int]]] = (),
) -> int:
    direct_url = f"http://127.0.0.1:{upstream[0]}"
    servers = [("parley", parley), *others]
    urls = {"direct": direct_url} | {name: f"http://127.0.0.1:{port}" for name, (port, _) in servers}
    for url in urls.values():
        await check_reply(url, args.chunks)

    load_before = load_average()
    rows: list[tuple[int, dict[str, Throughput]]] = []
    for concurrency in args.concurrency:
        best: dict[str, Throughput] = {}
        sides = [("direct", direct_url, None)] + [(name, urls[name], pid) for name, (_, pid) in servers]
        for _ in range(args.repeat):  # interleaved, best of: noise on a shared machine only slows
            for name, url, pid in sides:
                requests = [_streamer(url + CHAT_PATH)] * concurrency
                result = await throughput(requests, args.duration, args.warmup, args.max_requests, pid)
                if result.first_error is not None:
                    raise result.first_error
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
        f"machine load average (1 min) before/after: {load_before}/{load_average()}; above ~1 the other "
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
    limits_added: dict[int, float] = {}
    for p in (50, 99):
        d = percentile(ttft["direct"], p)
        line = f"{'p' + str(p):>6} | {d:>8.3f}"
        for name in names:
            v = percentile(ttft[name], p)
            line += f" | {v:>8.3f} | {v - d:>8.3f}"
            if name == "parley":
                added[p] = v - d
            if name == "limits":
                limits_added[p] = v - d
        print(line)
    print()

    verdicts = []
    at_64 = [best for concurrency, best in rows if concurrency == 64]
    if at_64:
        for name in ("parley", "limits") if "limits" in names else ("parley",):
            direct, via = at_64[0]["direct"], at_64[0][name]
            ratio = via.requests_per_second / direct.requests_per_second
            target = TARGETS["throughput_ratio_at_64"]
            verdicts.append(
                f"{name}: throughput at 64 streams {ratio:.0%} of direct (target >= {target:.0%}): "
                f"{'met' if ratio >= target else 'MISSED'}"
            )
    target = TARGETS["added_ttft_p50_ms"]
    verdicts.append(
        f"added time to first token p50 {added[50]:.3f} ms (target < {target:g} ms): "
        f"{'met' if added[50] < target else 'MISSED'}"
    )
    if 50 in limits_added:
        verdicts.append(
            f"limits: added time to first token p50 {limits_added[50]:.3f} ms (target < {target:g} ms): "
            f"{'met' if limits_added[50] < target else 'MISSED'}"
        )
    for verdict in verdicts:
        print(verdict)
    if args.metrics_port is not None:
        print(await counted_requests(args.metrics_port))
    return 0


async def counted_requests(metrics_port: int) -> str:
    """What the Parley with metrics on counted on the benchmarked route, from its own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
        text = await reply.text()
    counted = re.search(r'parley_http_requests_total\{[^}]*route="/v1/chat/completions"[^}]*status="200"\} (\S+)', text)
    tokens = re.search(r'parley_completion_tokens_total\{[^}]*model="bench"[^}]*\} (\S+)', text)
    if counted is None or tokens is None:
        raise BenchError(f"the metrics Parley did not count the benchmark's requests: {text[:500]!r}")
    return (
        f"metrics: the metrics Parley counted {float(counted[1]):.0f} requests "
        f"and {float(tokens[1]):.0f} completion tokens"
    )


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
    parser.add_argument("--metrics", action="store_true", help="also a Parley with metrics on, side by side")
    parser.add_argument(
        "--access",
        metavar="REDIS_URL",
        help="also measure a Parley with everything on: keys required (a pk- key), its limits in this Redis, metrics",
    )
    parser.add_argument(
        "--limits",
        metavar="REDIS_URL",
        help="also measure a Parley whose model has limits and a budget, counted in this Redis",
    )
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_upstream:
        uvloop.run(serve_upstream(args.chunks))
        return 0
    # With --metrics, the first Parley has them off for sure, whatever the environment holds.
    metrics_off = "metrics = false\n" if args.metrics else ""
    with (
        tempfile.TemporaryDirectory(prefix="parley-bench-") as workdir,
        fake_upstream(args.chunks) as upstream,
        parley_server(upstream[0], Path(workdir) / "parley", settings=metrics_off) as parley,
        contextlib.ExitStack() as others,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        compared: list[tuple[str, tuple[int, int]]] = []
        if args.baseline is not None:
            baseline = others.enter_context(parley_server(upstream[0], Path(workdir) / "baseline", args.baseline))
            compared.append(("baseline", baseline))
        args.metrics_port = free_port() if args.metrics else None
        if args.metrics_port is not None:
            settings = f"metrics_port = {args.metrics_port}\n"
            metrics = others.enter_context(parley_server(upstream[0], Path(workdir) / "metrics", settings=settings))
            compared.append(("metrics", metrics))
        if args.limits is not None:
            compared.append(("limits", others.enter_context(_limited_parley(upstream[0], Path(workdir), args.limits))))
        if args.access is not None:
            compared.append(("access", others.enter_context(_guarded_parley(upstream[0], Path(workdir), args.access))))
            if args.baseline is not None:
                guarded = _guarded_parley(upstream[0], Path(workdir), args.access, args.baseline, "access-baseline")
                compared.append(("access-base", others.enter_context(guarded)))
        return runner.run(bench(args, upstream, parley, compared))


@contextlib.contextmanager
def _limited_parley(upstream_port: int, workdir: Path, redis_url: str) -> Iterator[tuple[int, int]]:
    """A Parley whose model has limits too high to refuse: every request pays the reservation (one
    Redis round trip) and its settlement (another), as a limited key's would."""
    prefix = f"parley-bench-{os.getpid()}:"
    limits = (
        "limits = {requests_per_minute = 1000000000, tokens_per_minute = 1000000000000, daily_tokens = 1000000000000}\n"
    )
    try:
        with parley_server(
            upstream_port,
            workdir / "limits",
            settings=f'redis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n',
            model_settings=limits,
        ) as server:
            yield server
    finally:
        _forget_redis_keys(redis_url, prefix)


@contextlib.contextmanager
def _guarded_parley(
    upstream_port: int, workdir: Path, redis_url: str, source: Path | None = None, name: str = "access"
) -> Iterator[tuple[int, int]]:
    """A Parley with access all on: keys required, the clients' `pk-` key limited (too high to
    refuse, so every request reserves and settles in Redis), and Prometheus metrics collected.
    With `source`, that checkout's code runs it (with --baseline: access's cost before and after)."""
    folder = workdir / name
    folder.mkdir(exist_ok=True)
    prefix = f"parley-bench-{name}-{os.getpid()}"
    env = {"PARLEY_ADMIN_KEY": secrets.token_urlsafe(32), "PARLEY_KEY_SECRET": secrets.token_urlsafe(32)}
    settings = f'data_dir = "{folder / "data"}"\nredis_url = "{redis_url}"\nredis_prefix = "{prefix}"\n'
    config = folder / "keys.toml"
    config.write_text(settings + '[[models]]\nname = "bench"\nprovider = "fake"\n')
    limits = ["--rpm", "1000000000", "--tpm", "1000000000000", "--daily-tokens", "1000000000000"]
    created = subprocess.run(
        [sys.executable, "-m", "parley.cli", "keys", "create", "--config", str(config), "--name", "bench", *limits],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    try:
        with parley_server(upstream_port, folder, source, settings=settings, env=env) as server:
            CLIENT_HEADERS[f"http://127.0.0.1:{server[0]}"] = {**JSON, "Authorization": f"Bearer {key}"}
            yield server
    finally:
        _forget_redis_keys(redis_url, prefix)


def _forget_redis_keys(redis_url: str, prefix: str) -> None:
    """Remove what a benchmarked server kept in Redis under its own prefix."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


if __name__ == "__main__":
    sys.exit(main())
