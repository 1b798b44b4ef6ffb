"""What a stored conversation turn costs: `POST /api/chat` next to a stateless `POST /v1/chat/completions`.

Starts the fake OpenAI-compatible upstream of bench/harness.py (20 content chunks per reply) and,
per store, a real `parley serve` in front of it: SQLite (a temporary `data_dir`) and PostgreSQL
(a database created for the run on PARLEY_BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test, dropped after; an unreachable server is reported,
not fatal). On the same server, in interleaved windows, best of N, it measures at each
concurrency the requests/s and Parley's CPU ms per request (from /proc) of:

- `/v1/chat/completions`, streamed, read to `[DONE]`: what a proxied request costs;
- `/api/chat`, streamed SSE, read to `message_complete` (anything else is a failed request):
  each client keeps its own conversation for a few turns (`--turns-per-conversation`), sending
  the `conversation_id` of its first `message_start`, then starts another, so loading the
  history is part of every turn. Messages are ~100 characters, the same every run.

With `--end-users` each client names its own end user (`X-Parley-User`), so its conversations
are private and every turn's reads and writes filter by owner.

Targets: at 64 streams `/api/chat` keeps at least 40% of `/v1`'s throughput on SQLite, 30% on
PostgreSQL.

    uv run python bench/conversations.py [--duration 2] [--repeat 3] [--stores sqlite postgresql]

With `--baseline DIR` (the `src` folder of another checkout, e.g. a `git worktree` of an older
commit) a second Parley per store runs that code with this environment, measured in the same
windows, interleaved: a change's cost, before and after, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import uvloop
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parley.store import async_url

# Run as a script, only this folder is on sys.path; the shared code is imported as mypy reads it.
sys.path.append(str(Path(__file__).resolve().parent.parent))
from bench.harness import (
    DONE,
    BenchError,
    Request,
    Throughput,
    fake_upstream,
    load_average,
    parley_server,
    throughput,
)

TARGETS = {"sqlite": 0.40, "postgresql": 0.30}  # /api/chat ÷ /v1 throughput at 64 streams
POSTGRES_URL = os.environ.get("PARLEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
UPSTREAM_CHUNKS = 20
V1_PATH = "/v1/chat/completions"
CHAT_PATH = "/api/chat"
ROUTES = ("v1", "chat")
JSON = {"Content-Type": "application/json"}
V1_BODY = json.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say something, quickly."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
COMPLETE = b"event: message_complete\r\n"
CONVERSATION_ID = re.compile(rb'"conversation_id":"([^"]+)"')
# What people ask a chat front end, about 100 characters each; clients take them in turn.
MESSAGES = (
    "Can you summarise the main differences between SQLite and PostgreSQL for a small web application?",
    "What would change if we expect around two hundred concurrent users writing messages every minute?",
    "How should I back up the database every night without stopping the server or losing recent writes?",
    "Please draft a short note for the team explaining why we picked this setup, in plain words, no jargon.",
    "Is there anything in that plan that would break when we move the server to a different machine later?",
    "Thanks. One more thing: how do I check that the backups actually restore, and how often should I try?",
    "I'm writing a cover letter for a junior data analyst role; could you suggest a strong opening sentence?",
    "Make it a little less formal, and mention that I taught myself SQL and Python during the last two years.",
    "What questions might they ask in the first interview, and how would you prepare for the technical part?",
    "Could you give me three example answers for 'tell me about a project you are proud of', each very short?",
    "Explain, like I'm new to cooking, why my bread comes out dense and flat even though the dough rose well.",
    "If I switch to a wetter dough, what do I need to change about kneading, shaping and the baking time too?",
)


# --- the requests --------------------------------------------------------------------------------


def v1_request(base_url: str) -> Request:
    """A stateless streamed completion, read to its end."""
    url = base_url + V1_PATH

    async def request(session: aiohttp.ClientSession) -> None:
        async with session.post(url, data=V1_BODY, headers=JSON) as reply:
            body = await reply.read()
        if reply.status != 200:
            raise BenchError(f"{V1_PATH} answered {reply.status}: {body[:300]!r}")
        if not body.endswith(DONE):
            raise BenchError(f"{V1_PATH}: stream did not end with [DONE]: {body[-200:]!r}")

    return request


class Conversation:
    """One client's chat: `turns` turns in one conversation, then a new one; a failed turn starts over."""

    def __init__(self, base_url: str, client: int, turns: int, *, end_user: bool = False) -> None:
        self._url = base_url + CHAT_PATH
        self._headers = JSON | {"X-Parley-User": f"user-{client}"} if end_user else JSON
        self._client = client
        self._turns = turns
        self._conversation_id: str | None = None
        self._turn = 0
        self._started = 0  # conversations so far: which message comes next depends only on these counters

    async def __call__(self, session: aiohttp.ClientSession) -> None:
        message = MESSAGES[(self._client * 7 + self._started * 3 + self._turn) % len(MESSAGES)]
        payload: dict[str, str] = {"message": message}
        if self._conversation_id is not None:
            payload["conversation_id"] = self._conversation_id
        try:
            conversation_id = await self._turn_reply(session, json.dumps(payload).encode())
        except BaseException:
            self._new_conversation()
            raise
        if self._conversation_id not in (None, conversation_id):
            self._new_conversation()
            raise BenchError(f"{CHAT_PATH}: sent {self._conversation_id!r}, the reply is in {conversation_id!r}")
        self._conversation_id = conversation_id
        self._turn += 1
        if self._turn >= self._turns:
            self._new_conversation()

    async def _turn_reply(self, session: aiohttp.ClientSession, data: bytes) -> str:
        async with session.post(self._url, data=data, headers=self._headers) as reply:
            body = await reply.read()
        if reply.status != 200:
            raise BenchError(f"{CHAT_PATH} answered {reply.status}: {body[:300]!r}")
        if COMPLETE not in body[-1000:]:
            raise BenchError(f"{CHAT_PATH}: no message_complete at the end of the stream: {body[-300:]!r}")
        found = CONVERSATION_ID.search(body, 0, 1000)
        if found is None:
            raise BenchError(f"{CHAT_PATH}: no conversation_id in message_start: {body[:300]!r}")
        return found.group(1).decode()

    def _new_conversation(self) -> None:
        self._conversation_id = None
        self._turn = 0
        self._started += 1


async def check_server(base_url: str) -> None:
    """Both routes answer in full, and a two-turn conversation is stored, before anything is timed."""
    expected_text = "".join(f"tok{i} " for i in range(UPSTREAM_CHUNKS))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await v1_request(base_url)(session)
        turns: list[str] = []
        for message in MESSAGES[:2]:
            payload = {"message": message} | ({"conversation_id": turns[-1]} if turns else {})
            async with session.post(base_url + CHAT_PATH, json=payload) as reply:
                body = await reply.read()
            events = [
                (name.decode(), json.loads(data))
                for name, data in re.findall(rb"^event: (\w+)\r?\ndata: (.*?)\r?$", body, flags=re.MULTILINE)
            ]
            names = [name for name, _ in events]
            text = "".join(data["text"] for name, data in events if name == "text_delta")
            if reply.status != 200 or names[:1] != ["message_start"] or names[-1:] != ["message_complete"]:
                raise BenchError(f"{base_url}{CHAT_PATH}: unexpected reply ({reply.status}): {body[:500]!r}")
            if text != expected_text:
                raise BenchError(f"{base_url}{CHAT_PATH}: the reply's text was {text!r}, not {expected_text!r}")
            turns.append(events[0][1]["conversation_id"])
        async with session.get(f"{base_url}/api/conversations/{turns[0]}") as reply:
            stored = await reply.json()
        if turns[0] != turns[1] or [m["role"] for m in stored.get("messages", [])] != ["user", "assistant"] * 2:
            raise BenchError(f"{base_url}: the conversation was not stored as two turns: {stored!r}")


# --- stores --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty database on the PostgreSQL server, dropped (whoever is connected) afterwards."""
    server = make_url(POSTGRES_URL)
    name = f"parley_bench_{uuid.uuid4().hex[:12]}"
    await _admin(server, f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(server.set(database="postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(url: URL, statement: str) -> None:
    engine = create_async_engine(
        async_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )
    try:
        async with engine.connect() as admin:
            await admin.execute(text(statement))
    finally:
        await engine.dispose()


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The best window of one server, route and concurrency, and the failures of all its windows."""

    best: Throughput | None = None
    errors: int = 0
    first_error: str | None = None

    def add(self, result: Throughput) -> None:
        if self.best is None or result.requests_per_second > self.best.requests_per_second:
            self.best = result
        self.errors += result.errors
        if self.first_error is None and result.first_error is not None:
            self.first_error = f"{type(result.first_error).__name__}: {result.first_error}"[:400]


@dataclass
class Server:
    name: str  # "parley" or "baseline"
    base_url: str
    pid: int
    conversations: list[Conversation] = field(default_factory=list)
    cells: dict[tuple[int, str], Cell] = field(default_factory=dict)


async def measure(servers: list[Server], args: argparse.Namespace) -> None:
    for server in servers:
        await check_server(server.base_url)
        server.conversations = [
            Conversation(server.base_url, client, args.turns_per_conversation, end_user=args.end_users)
            for client in range(max(args.concurrency))
        ]
    for concurrency in args.concurrency:
        sides = [(server, route) for server in servers for route in ROUTES]
        for _ in range(args.repeat):  # interleaved, best of: noise on a shared machine only slows
            for server, route in sides:
                requests: list[Request] = (
                    [v1_request(server.base_url)] * concurrency
                    if route == "v1"
                    else list(server.conversations[:concurrency])
                )
                result = await throughput(requests, args.duration, args.warmup, args.max_requests, server.pid)
                server.cells.setdefault((concurrency, route), Cell()).add(result)
            sides.reverse()  # no side always runs right after another
        print(f"  measured concurrency {concurrency}", file=sys.stderr, flush=True)


def _cells(cell: Cell | None) -> tuple[str, str]:
    best = cell.best if cell is not None else None
    if best is None:
        return "n/a", "n/a"
    cpu = f"{best.cpu_ms_per_request:.2f}" if best.cpu_ms_per_request is not None else "n/a"
    return f"{best.requests_per_second:.0f}", cpu


def _client_cpu(cell: Cell | None) -> str:
    return f"{cell.best.client_cpu_percent:.0f}" if cell is not None and cell.best is not None else "n/a"


def ratio(server: Server, concurrency: int) -> float | None:
    v1, chat = server.cells.get((concurrency, "v1")), server.cells.get((concurrency, "chat"))
    if v1 is None or chat is None or v1.best is None or chat.best is None or not v1.best.requests_per_second:
        return None
    return chat.best.requests_per_second / v1.best.requests_per_second


def report(store: str, servers: list[Server], args: argparse.Namespace, loads: tuple[str, str]) -> list[str]:
    """Print the store's table; return its verdict lines."""
    print()
    print(f"{store}: machine load average (1 min) before/after: {loads[0]}/{loads[1]}")
    named = len(servers) > 1
    header = (
        f"{'streams':>7} | "
        + (f"{'server':<8} | " if named else "")
        + f"{'/v1 req/s':>9} | {'/v1 CPU ms/req':>14} | {'/api/chat req/s':>15} | {'/api/chat CPU ms/req':>20} | "
        + f"{'ratio':>5}"
    )
    print(header)
    print("-" * len(header))
    notes = []
    for concurrency in args.concurrency:
        for server in servers:
            v1_rps, v1_cpu = _cells(server.cells.get((concurrency, "v1")))
            chat_rps, chat_cpu = _cells(server.cells.get((concurrency, "chat")))
            share = ratio(server, concurrency)
            print(
                f"{concurrency:>7} | "
                + (f"{server.name:<8} | " if named else "")
                + f"{v1_rps:>9} | {v1_cpu:>14} | {chat_rps:>15} | {chat_cpu:>20} | "
                + (f"{share:>5.2f}" if share is not None else f"{'n/a':>5}")
            )
            for route in ROUTES:
                cell = server.cells.get((concurrency, route))
                if cell is not None and cell.errors:
                    path = V1_PATH if route == "v1" else CHAT_PATH
                    notes.append(
                        f"  {server.name} {path} at {concurrency} streams: {cell.errors} failed requests "
                        f"(not counted); first: {cell.first_error}"
                    )
    for note in notes:
        print(note)
    client = [
        f"{concurrency} streams "
        + "/".join(_client_cpu(server.cells.get((concurrency, route))) for server in servers for route in ROUTES)
        for concurrency in args.concurrency
    ]
    sides = "/".join(f"{server.name} {route}" for server in servers for route in ROUTES).replace(" chat", " api/chat")
    print(f"load generator CPU % ({sides}): " + ", ".join(client) + " (near 100: the client is the limit)")

    verdicts = []
    target = TARGETS[store]
    if 64 in args.concurrency:
        shares = {server.name: ratio(server, 64) for server in servers}
        share = shares.get("parley")
        before = shares.get("baseline")
        was = f" (baseline {before:.0%})" if before is not None else ""
        if share is None:
            verdicts.append(f"{store}: /api/chat at 64 streams: not measured (target >= {target:.0%}): MISSED")
        else:
            verdicts.append(
                f"{store}: /api/chat at 64 streams {share:.0%} of /v1's throughput{was} "
                f"(target >= {target:.0%}): {'met' if share >= target else 'MISSED'}"
            )
    return verdicts


@contextlib.contextmanager
def servers_for(
    store: str, store_settings: list[str], upstream_port: int, workdir: Path, baseline: Path | None
) -> Iterator[list[Server]]:
    """One `parley serve` (and one from the baseline's code) per store, each with its own database."""
    sources = [("parley", None)] + ([("baseline", baseline)] if baseline is not None else [])
    with contextlib.ExitStack() as stack:
        servers = []
        for (name, source), settings in zip(sources, store_settings, strict=True):
            port, pid = stack.enter_context(
                parley_server(upstream_port, workdir / f"{store}-{name}", source, settings=settings)
            )
            servers.append(Server(name, f"http://127.0.0.1:{port}", pid))
        yield servers


async def _postgres_settings(stack: contextlib.AsyncExitStack, count: int) -> list[str]:
    urls = [await stack.enter_async_context(postgres_database()) for _ in range(count)]
    return [f"database_url = {json.dumps(url)}\n" for url in urls]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per run (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each window (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell, best kept (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="streams (default 1 16 64)")
    parser.add_argument(
        "--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"], help="(default both)"
    )
    parser.add_argument(
        "--turns-per-conversation", type=int, default=5, help="turns before a client starts a new conversation (5)"
    )
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per run (default 200000)")
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to measure side by side")
    parser.add_argument(
        "--end-users", action="store_true", help="each client names its end user: private conversations"
    )
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "parley" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a src/ folder with the parley package in it")

    print(
        f"Stored turns: streaming POST {CHAT_PATH} (history loaded, user message and reply stored; "
        f"{args.turns_per_conversation} turns per conversation, ~100-character messages"
        f"{', each client its own end user' if args.end_users else ''}) vs. streaming "
        f"POST {V1_PATH} (stateless), on the same server"
    )
    print(
        f"fake upstream: raw asyncio (uvloop) server, one process, {UPSTREAM_CHUNKS} content chunks per reply; "
        f'Parley: `parley serve`, log_level="warning"; {args.duration:g} s windows after {args.warmup:g} s '
        f"warm-up, best of {args.repeat}, routes interleaved; {os.cpu_count()} CPUs shared by client, Parley "
        "and upstream; ratio = /api/chat ÷ /v1 requests/s"
    )
    verdicts: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="parley-bench-") as directory,
        fake_upstream(UPSTREAM_CHUNKS) as upstream,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        workdir = Path(directory)
        count = 2 if args.baseline is not None else 1
        for store in args.stores:
            verdicts += run_store(store, args, upstream[0], workdir, runner, count)
    print()
    for verdict in verdicts:
        print(verdict)
    return 0


def run_store(
    store: str, args: argparse.Namespace, upstream_port: int, workdir: Path, runner: asyncio.Runner, count: int
) -> list[str]:
    """Measure one store (databases made and dropped here); a PostgreSQL that can't be reached is a note."""
    databases = contextlib.AsyncExitStack()
    try:
        if store == "sqlite":
            settings = [f"data_dir = {json.dumps(str(workdir / f'sqlite-data-{i}'))}\n" for i in range(count)]
        else:
            try:
                settings = runner.run(_postgres_settings(databases, count))
            except Exception as exc:  # any failure to reach the server: say so, measure the rest
                shown = make_url(POSTGRES_URL).render_as_string(hide_password=True)
                print(f"\n{store}: skipped, not reachable at {shown}: {type(exc).__name__}: {exc}")
                return [f"{store}: not measured (PostgreSQL not reachable)"]
        load_before = load_average()
        try:
            with servers_for(store, settings, upstream_port, workdir, args.baseline) as servers:
                runner.run(measure(servers, args))
        except (BenchError, RuntimeError, aiohttp.ClientError) as exc:  # a broken server: say why, go on
            print(f"\n{store}: not measured: {type(exc).__name__}: {exc}")
            return [f"{store}: not measured ({type(exc).__name__}): MISSED"]
        return report(store, servers, args, (load_before, load_average()))
    finally:
        runner.run(databases.aclose())


if __name__ == "__main__":
    sys.exit(main())
