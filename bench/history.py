"""Conversation store latency: append a turn, and load a 1,000-message conversation.

For SQLite (a file in a temporary directory) and PostgreSQL (a database created for the run on
PARLEY_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test, dropped after),
through the real ConversationStore:

- load: the window a turn reads (`turn_history`: the newest messages fitting could keep for a
  2,048-token context), from the database (the server's store, its kept histories skipped) and
  again (kept in process), and the whole
  conversation (`history`, `get_conversation`), of a conversation holding 1,000 messages;
- turn: what one chat exchange writes, as a turn writes it: `open_turn` (the user's message and
  the empty reply) then `finish_reply` (with usage and timing), one at a time (so no batching
  across turns helps); and, for comparison, the older three single writes.

Targets: the fitting window p50 <= 5 ms, a turn p50 <= 2 ms, on both stores.

Prints p50 / p99 in ms per backend; an unreachable PostgreSQL is reported, not fatal. Runtime is
bounded (each measurement stops early at its time budget); exits 0.

    uv run python bench/history.py [--loads 100] [--turns 200]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from parley.chat.context import history_window
from parley.chat.run import Timing
from parley.events import Usage
from parley.store import ConversationStore, async_url, open_store

POSTGRES_URL = os.environ.get("PARLEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MESSAGES = 1000
CONTEXT_SIZE = 2048  # the bundled model's: the window is the newest messages fitting could keep
PHASE_BUDGET_S = 4.5  # per measurement: 4 per backend, so under a minute in all with filling
USER_TEXT = "Could you explain how the context window limits what the model remembers of our chat? " * 2
REPLY_TEXT = "The model only sees the tokens that fit in its context window; older turns fall out. " * 6


@dataclass
class Row:
    backend: str
    operation: str
    samples: list[float]


EVERY_POSITION = 2**31 - 1  # `before` that every stored message comes before


async def _timed(operation: Callable[[], Awaitable[object]], count: int, budget_s: float) -> list[float]:
    for _ in range(3):  # warm caches and the connection pool
        await operation()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < count and time.perf_counter() < deadline:
        started = time.perf_counter()
        await operation()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _fill(store: ConversationStore, conversation_id: str, messages: int) -> None:
    for i in range(messages // 2):
        await store.append_message(conversation_id, "user", f"{i}: {USER_TEXT}")
        await store.append_message(conversation_id, "assistant", f"{i}: {REPLY_TEXT}", model="bench")


async def _turn(store: ConversationStore, conversation_id: str) -> None:
    """A chat turn's writes, as `/api/chat` and the WebSocket make them: opened, then finished."""
    opened = await store.open_turn(conversation_id, USER_TEXT, model="bench")
    await store.finish_reply(
        opened.reply_id,
        conversation_id,
        content=REPLY_TEXT,
        usage=Usage(prompt_tokens=1200, completion_tokens=90),
        timing=Timing(time_to_first_token_ms=35.0, total_ms=1500.0, tokens_per_second=60.0),
        finish_reason="stop",
    )


async def _three_writes(store: ConversationStore, conversation_id: str) -> None:
    """The older single-write methods, for comparison: three transactions through the ORM."""
    await store.append_message(conversation_id, "user", USER_TEXT)
    reply = await store.start_assistant_message(conversation_id, model="bench")
    await store.finish_message(
        reply,
        content=REPLY_TEXT,
        usage=Usage(prompt_tokens=1200, completion_tokens=90),
        timing=Timing(time_to_first_token_ms=35.0, total_ms=1500.0, tokens_per_second=60.0),
        finish_reason="stop",
    )


async def bench_backend(name: str, url: str, loads: int, turns: int) -> list[Row]:
    store = await open_store(url)
    try:
        long = await store.create_conversation("bench: 1,000 messages")
        started = time.perf_counter()
        await _fill(store, long.id, MESSAGES)
        print(f"  {name}: filled {MESSAGES} messages in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        assert len((await store.get_conversation(long.id)).messages) == MESSAGES

        window = history_window(CONTEXT_SIZE)

        async def window_from_the_database() -> object:
            # The server's own store, as a turn reads when another server wrote meanwhile: `before`
            # skips the kept histories. (A new store per read measured its start-up: a reader's
            # thread and connection, an empty page cache.)
            return await store.turn_history(long.id, window, before=EVERY_POSITION)

        rows = [
            Row(
                name,
                f"fitting window ({window} newest), database",
                await _timed(window_from_the_database, loads, PHASE_BUDGET_S),
            ),
            Row(
                name,
                f"fitting window ({window} newest), again",
                await _timed(lambda: store.recent_history(long.id, window), loads, PHASE_BUDGET_S),
            ),
            Row(name, "load all 1,000 (history)", await _timed(lambda: store.history(long.id), loads, PHASE_BUDGET_S)),
            Row(
                name,
                "load all 1,000 (get_conversation)",
                await _timed(lambda: store.get_conversation(long.id), loads, PHASE_BUDGET_S),
            ),
        ]
        short = await store.create_conversation("bench: turns")
        for label, conversation in (("new chat", short.id), ("1,000-message chat", long.id)):
            samples = await _timed(functools.partial(_turn, store, conversation), turns, PHASE_BUDGET_S)
            rows.append(Row(name, f"append a turn, {label}", samples))
        rows.append(
            Row(
                name,
                "append a turn, 3 single writes (older API)",
                await _timed(lambda: _three_writes(store, short.id), turns, PHASE_BUDGET_S),
            )
        )
        return rows
    finally:
        await store.aclose()


async def _postgres_database() -> str:
    engine = create_async_engine(
        async_url(POSTGRES_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 5}
    )
    name = f"parley_bench_{uuid.uuid4().hex[:12]}"
    try:
        async with engine.connect() as admin:
            await admin.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(url: str) -> None:
    admin_url = make_url(url).set(database="postgres")
    engine = create_async_engine(async_url(admin_url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as admin:
            await admin.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


def _percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _print_table(rows: list[Row], notes: list[str]) -> None:
    header = f"{'backend':<10} | {'operation':<36} | {'n':>4} | {'p50 ms':>8} | {'p99 ms':>8} | {'mean ms':>8}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        p50, p99, mean = _percentile(row.samples, 50), _percentile(row.samples, 99), statistics.fmean(row.samples)
        cells = f"{len(row.samples):>4} | {p50:>8.2f} | {p99:>8.2f} | {mean:>8.2f}"
        print(f"{row.backend:<10} | {row.operation:<36} | {cells}")
    for note in notes:
        print(note)
    print()


async def main(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as directory:
        rows += await bench_backend("sqlite", f"sqlite:///{Path(directory) / 'parley.db'}", args.loads, args.turns)
    try:
        url = await _postgres_database()
    except Exception as exc:  # any failure to reach the server means: report it, bench the rest
        notes.append(f"postgresql: skipped, not reachable at {POSTGRES_URL}: {type(exc).__name__}: {exc}")
    else:
        try:
            rows += await bench_backend("postgresql", url, args.loads, args.turns)
        finally:
            await _drop_postgres_database(url)
    _print_table(rows, notes)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=100, help="loads of the long conversation to time, per kind")
    parser.add_argument("--turns", type=int, default=200, help="turns to time, per kind")
    sys.exit(asyncio.run(main(parser.parse_args())))
