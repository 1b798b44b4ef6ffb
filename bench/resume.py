"""What keeping a run's event log costs, and how fast another instance resumes a run.

Starts the fake OpenAI-compatible upstream of bench/harness.py and three `parley serve` in front
of it (each on its own SQLite store): one without Redis (its logs in memory) and two sharing a
Redis (database 5, a prefix of the run's own, removed after). At `--streams` concurrent clients,
in interleaved rounds of windows, it measures `POST /api/chat` streamed to `message_complete`:

- no log: `on_disconnect: "cancel"`, the direct path (the run streams to its one client);
- memory log: `on_disconnect: "continue"` without Redis (a driver task, the log in memory);
- Redis log: `on_disconnect: "continue"` with Redis (one XADD pipeline per model batch).

Then the resume latency from another instance: a reply is started on one Redis instance, its
client leaves after `message_start`, and `GET /api/runs/{id}/events?after=1` on the other
instance is timed to its first event (p50, p99).

Each log case is compared with its no-log case round by round (the two windows beside each other
in time, on the same server), and the median of those costs is its cost: on a shared machine the
best window of each case, compared, moved by more than the effect measured.

Target: the Redis log costs under 15% of the no-log throughput at 64 streams.

    uv run python bench/resume.py [--streams 64] [--duration 3] [--repeat 7] [--resumes 200]

With `--baseline DIR` (the `src` folder of another checkout) two more servers run that code, one
with its logs in memory and one in the same Redis, measured in the same interleaved windows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import redis

sys.path.append(str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    BenchError,
    Request,
    Throughput,
    fake_upstream,
    load_average,
    parley_server,
    percentile,
    throughput,
)

REDIS_URL = os.environ.get("PARLEY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
COMPLETE = b"event: message_complete\r\n"
MESSAGE = "Tell me about the weather in a long and winding way, if you please. " * 2


def chat_request(base_url: str, on_disconnect: str) -> Request:
    body = json.dumps({"message": MESSAGE, "on_disconnect": on_disconnect}).encode()
    headers = {"Content-Type": "application/json"}

    async def request(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{base_url}/api/chat", data=body, headers=headers) as reply:
            data = await reply.read()
            if reply.status != 200 or COMPLETE not in data:
                raise BenchError(f"/api/chat ({on_disconnect}): {reply.status} {data[-300:]!r}")

    return request


async def resume_latencies(start_url: str, resume_url: str, count: int) -> list[float]:
    """Seconds from a resume request on another instance to its first event, per resumed run."""
    latencies: list[float] = []
    body = {"message": MESSAGE, "on_disconnect": "continue"}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(f"{start_url}/api/chat", json=body) as reply:
                first = await reply.content.readuntil(b"\r\n\r\n")
                run_id = json.loads(first.split(b"data: ", 1)[1])["run_id"]
            started = time.perf_counter()
            async with session.get(f"{resume_url}/api/runs/{run_id}/events?after=1") as resumed:
                event = await resumed.content.readuntil(b"\r\n\r\n")
                latencies.append(time.perf_counter() - started)
                if resumed.status != 200 or not event.startswith(b"id: 2\r\n"):
                    raise BenchError(f"resume: {resumed.status} {event[:200]!r}")
    return latencies


async def measure(cases: list[tuple[str, Request, int]], args: argparse.Namespace) -> dict[str, list[Throughput]]:
    """Each case's windows, one a round, in rounds that run every case once."""
    rounds: dict[str, list[Throughput]] = {name: [] for name, _, _ in cases}
    order = list(cases)
    for _ in range(args.repeat):
        for name, request, pid in order:
            result = await throughput([request] * args.streams, args.duration, 0.5, 10**9, pid)
            if result.errors:
                raise BenchError(f"{name}: {result.errors} failed requests, the first: {result.first_error!r}")
            rounds[name].append(result)
        # Reversed each round: a log case doesn't always run right after its no-log case, on a
        # store (and a machine) that the earlier case has just warmed or filled.
        order.reverse()
    return rounds


def paired_costs(log: list[Throughput], no_log: list[Throughput]) -> list[float]:
    """The log's cost in each round: against the same server without a log, in the same round
    (beside each other in time, so the machine's other work weighs on both alike)."""
    pairs = zip(log, no_log, strict=True)
    return [1 - with_log.requests_per_second / without.requests_per_second for with_log, without in pairs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per window (default 3)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds, a window per case each (default 7)")
    parser.add_argument("--resumes", type=int, default=200, help="runs resumed for the latency (default 200)")
    parser.add_argument("--chunks", type=int, default=48, help="content chunks per reply (default 48)")
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to measure side by side")
    args = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"Redis not reachable at {REDIS_URL}: {exc}; nothing measured")
        return 0
    prefix = f"parley-bench-resume-{uuid.uuid4().hex[:8]}"
    shared = f'redis_url = "{REDIS_URL}"\nredis_prefix = "{prefix}"\n'
    folder = Path(tempfile.mkdtemp(prefix="parley-bench-resume-"))
    try:
        with contextlib.ExitStack() as stack:
            upstream_port, _ = stack.enter_context(fake_upstream(args.chunks))
            memory_port, memory_pid = stack.enter_context(parley_server(upstream_port, folder / "memory"))
            redis_port, redis_pid = stack.enter_context(parley_server(upstream_port, folder / "redis", settings=shared))
            other_port, _ = stack.enter_context(parley_server(upstream_port, folder / "other", settings=shared))
            memory_url, redis_url = f"http://127.0.0.1:{memory_port}", f"http://127.0.0.1:{redis_port}"
            cases = [
                ("no log (memory server)", chat_request(memory_url, "cancel"), memory_pid),
                ("memory log", chat_request(memory_url, "continue"), memory_pid),
                ("no log (Redis server)", chat_request(redis_url, "cancel"), redis_pid),
                ("Redis log", chat_request(redis_url, "continue"), redis_pid),
            ]
            if args.baseline is not None:
                base_dirs = folder / "base-memory", folder / "base-redis"
                _, base_memory_pid = base_memory = stack.enter_context(
                    parley_server(upstream_port, base_dirs[0], args.baseline)
                )
                _, base_redis_pid = base_redis = stack.enter_context(
                    parley_server(upstream_port, base_dirs[1], args.baseline, settings=shared)
                )
                base_memory_url = f"http://127.0.0.1:{base_memory[0]}"
                base_redis_url = f"http://127.0.0.1:{base_redis[0]}"
                cases += [
                    ("base: no log (memory)", chat_request(base_memory_url, "cancel"), base_memory_pid),
                    ("base: memory log", chat_request(base_memory_url, "continue"), base_memory_pid),
                    ("base: no log (Redis)", chat_request(base_redis_url, "cancel"), base_redis_pid),
                    ("base: Redis log", chat_request(base_redis_url, "continue"), base_redis_pid),
                ]
            rounds = asyncio.run(measure(cases, args))
            latencies = asyncio.run(resume_latencies(redis_url, f"http://127.0.0.1:{other_port}", args.resumes))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    print(
        f"POST /api/chat streamed, {args.streams} streams, {args.chunks} chunks a reply, {args.repeat} rounds of "
        f"{args.duration:g}s windows; load average {load_average()} on {os.cpu_count()} CPUs (shared)"
    )
    print(f"{'case':<26} {'req/s':>8} {'CPU ms/req':>11} {'cost, median':>13} {'cost, each round':>30}")
    baselines = {
        "memory log": "no log (memory server)",
        "Redis log": "no log (Redis server)",
        "base: memory log": "base: no log (memory)",
        "base: Redis log": "base: no log (Redis)",
    }
    for name, results in rounds.items():
        best = max(results, key=lambda result: result.requests_per_second)
        cpu = statistics.median(result.cpu_ms_per_request or 0.0 for result in results)
        cost = each = ""
        if name in baselines:
            costs = paired_costs(results, rounds[baselines[name]])
            cost = f"{statistics.median(costs) * 100:.1f}%"
            each = " ".join(f"{value * 100:.0f}" for value in costs)
        print(f"{name:<26} {best.requests_per_second:>8.0f} {cpu:>11.2f} {cost:>13} {each:>30}")
    print("(req/s: the best window; CPU: Parley's, the median window; cost: 1 - log req/s / no-log req/s, per round)")
    millis = [latency * 1000 for latency in latencies]
    print(
        f"\nresume on another instance, to the first event ({len(millis)} runs): "
        f"p50 {percentile(millis, 50):.2f} ms, p99 {percentile(millis, 99):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
