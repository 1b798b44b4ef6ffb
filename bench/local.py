"""The local model: Parley's llama.cpp provider next to raw llama-cpp-python, in one run.

Same GGUF (the bundled SmolLM2-135M-Instruct unless --model), same threads, temperature 0.
Parley's provider is driven in process (`LlamaCppModel.stream`, no HTTP), so the figures are
the engine's: prompt cache and batching, not the transport.

(a) Time to first token of turn 10 of a conversation with about 1,500 tokens of history:
    Parley with its cache off (the whole prompt evaluated) and on (turns 1-9 served before,
    so only the new message is read), raw llama-cpp-python cold (`reset()`) and with its own
    one-sequence prefix reuse; beside them a fresh 40-token prompt. Target: cached within
    1.5x of the fresh prompt's.
(b) 1, 2 and 4 chats at once: aggregate tokens/s and each client's time to first token.
    Raw llama-cpp-python serves one at a time (its API decodes one sequence), so its clients
    wait in turn. Target: 4 chats at least 1.8x the single-chat aggregate, every first token
    within 1 s.
(c) Single-chat tokens/s after the first token. Target: at least 95% of raw llama-cpp-python's.

    uv run python bench/local.py [--tokens 256] [--threads 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import LlamaCppConfig
from parley.events import TextDelta, Usage
from parley.models.base import ChatMessage, ChatRequest, GenerationParams
from parley.models.llamacpp import LlamaCppModel, bundled_model_path

CONTEXT = 4096
FRESH = [{"role": "user", "content": "Write a short poem about a lighthouse keeper and the sea at night."}]
TOPICS = ["lighthouses", "tea", "glaciers", "bees", "trains", "volcanoes", "owls", "rivers", "maps", "bread"]
CHATS = [
    "Describe the sea.",
    "Describe a forest in autumn.",
    "Describe the moon.",
    "Describe a busy city street.",
]


@dataclass(slots=True)
class Timed:
    first_token: float  # seconds from the request to its first text
    tokens: int
    seconds: float  # from the request to the last token
    cached: int | None = None

    @property
    def rate(self) -> float:
        """Tokens/s after the first token."""
        return (self.tokens - 1) / max(self.seconds - self.first_token, 1e-9)


def user_turn(index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    facts = " ".join(f"Fact {n} about {topic}: they matter in story {n} of the book." for n in range(7))
    return f"Turn {index + 1}. Tell me something about {topic}. {facts}"


# Parley's provider


async def parley_reply(model: LlamaCppModel, messages: list[dict[str, str]], tokens: int) -> tuple[Timed, str]:
    request = ChatRequest(
        messages=[ChatMessage.model_validate(m) for m in messages],
        params=GenerationParams(max_tokens=tokens, temperature=0),
    )
    started = time.perf_counter()
    first = 0.0
    text: list[str] = []
    usage: Usage | None = None
    async for batch in model.stream(request):
        for event in batch:
            if isinstance(event, TextDelta):
                first = first or time.perf_counter() - started
                text.append(event.text)
            elif isinstance(event, Usage):
                usage = event
    assert usage is not None
    timed = Timed(first, usage.completion_tokens, time.perf_counter() - started, usage.cached_tokens)
    return timed, "".join(text)


async def parley_model(path: Path, threads: int, *, cache: bool, parallel: int = 4) -> LlamaCppModel:
    config = LlamaCppConfig(
        name="local",
        provider="llamacpp",
        path=path,
        context_size=CONTEXT,
        threads=threads,
        parallel=parallel,
        cache_slots=parallel + 1,
        prompt_cache=cache,
    )
    model = LlamaCppModel(config)
    await model.load()
    return model


async def conversation(model: LlamaCppModel, turns: int) -> list[dict[str, str]]:
    """Nine served turns, their replies in the history: the messages of turn 10."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for index in range(turns - 1):
        messages.append({"role": "user", "content": user_turn(index)})
        _, text = await parley_reply(model, messages, 60)
        messages.append({"role": "assistant", "content": text})
    # The last message is short, so the turn's new tokens are about a fresh 40-token prompt's.
    messages.append({"role": "user", "content": f"Turn {turns}. One more thing about {TOPICS[0]}, briefly."})
    return messages


# Raw llama-cpp-python


def raw_reply(llama: Any, messages: list[dict[str, str]], tokens: int, *, cold: bool) -> Timed:
    if cold:
        llama.reset()
    started = time.perf_counter()
    first = 0.0
    count = 0
    for chunk in llama.create_chat_completion(messages=messages, max_tokens=tokens, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter() - started
            count += 1  # plain text: a chunk a token
    return Timed(first, count, time.perf_counter() - started)


def raw_model(path: Path, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(path), n_ctx=CONTEXT, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )


def row(name: str, *cells: str) -> None:
    print(f"{name:<32}" + "".join(f"{cell:>16}" for cell in cells[:-1]) + f"  {cells[-1]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    path = args.model or bundled_model_path()

    # (a) turn 10, cold and cached
    model = await parley_model(path, args.threads, cache=True)
    history = await conversation(model, args.turns)
    prompt_tokens = await model.count_tokens([ChatMessage.model_validate(m) for m in history])
    cached_runs = []
    for _ in range(args.repeat):
        # Each run is turn 10 right after turn 9: drop its own cached reply first.
        await parley_reply(model, [*history[:-1], {"role": "user", "content": "Reset."}], 1)
        cached_runs.append((await parley_reply(model, history, 16))[0])
    await model.aclose()
    cold_model = await parley_model(path, args.threads, cache=False)
    await parley_reply(cold_model, FRESH, 1)  # warm up
    parley_cold = [(await parley_reply(cold_model, history, 16))[0] for _ in range(args.repeat)]
    parley_fresh = [(await parley_reply(cold_model, FRESH, 16))[0] for _ in range(args.repeat)]
    await cold_model.aclose()

    # (b) and (c): concurrent chats, and one chat alone. Parley is measured before raw
    # llama-cpp-python is ever loaded: a Llama object loaded and closed in the same process left
    # Parley's decoding a third slower afterwards (125 -> 85-92 tokens/s, single chat).
    model = await parley_model(path, args.threads, cache=True)
    await parley_reply(model, [{"role": "user", "content": CHATS[0]}], args.tokens)  # warm up
    parley_rows: dict[int, tuple[float, list[Timed]]] = {}
    for count in (1, 2, 4):
        chats = [[{"role": "user", "content": text + f" (chat {count})"}] for text in CHATS[:count]]
        started = time.perf_counter()
        results = await asyncio.gather(*(parley_reply(model, chat, args.tokens) for chat in chats))
        elapsed = time.perf_counter() - started
        parley_rows[count] = (sum(timed.tokens for timed, _ in results) / elapsed, [timed for timed, _ in results])
    single = [{"role": "user", "content": CHATS[0]}]
    parley_single = [(await parley_reply(model, single, args.tokens))[0] for _ in range(args.repeat)]
    await model.aclose()

    llama = raw_model(path, args.threads)
    raw_reply(llama, FRESH, 1, cold=True)
    raw_cold = [raw_reply(llama, history, 16, cold=True) for _ in range(args.repeat)]
    raw_cached = []
    for _ in range(args.repeat):
        raw_reply(llama, [*history[:-1], {"role": "user", "content": "Reset."}], 1, cold=False)
        raw_cached.append(raw_reply(llama, history, 16, cold=False))
    raw_fresh = [raw_reply(llama, FRESH, 16, cold=True) for _ in range(args.repeat)]
    raw_reply(llama, single, args.tokens, cold=True)  # warm up
    raw_rows: dict[int, tuple[float, list[Timed]]] = {}
    for count in (1, 2, 4):
        chats = [[{"role": "user", "content": text + f" (chat {count})"}] for text in CHATS[:count]]
        raw_started = time.perf_counter()
        raw_runs = []
        for chat in chats:  # one at a time: each client waits for those before it
            run = raw_reply(llama, chat, args.tokens, cold=True)
            run.first_token += time.perf_counter() - raw_started - run.seconds
            raw_runs.append(run)
        raw_rows[count] = (sum(run.tokens for run in raw_runs) / (time.perf_counter() - raw_started), raw_runs)
    raw_single = [raw_reply(llama, single, args.tokens, cold=True) for _ in range(args.repeat)]
    llama.close()

    def ms(runs: list[Timed]) -> str:
        return f"{statistics.median(r.first_token for r in runs) * 1000:.0f} ms"

    print(f"(a) time to first token, turn {args.turns} ({prompt_tokens} prompt tokens), median of {args.repeat}")
    row("", "Parley", "raw l-c-p")
    row("fresh 40-token prompt", ms(parley_fresh), ms(raw_fresh))
    row(f"turn {args.turns}, cold", ms(parley_cold), ms(raw_cold))
    row(f"turn {args.turns}, cached", ms(cached_runs), ms(raw_cached))
    print(f"    Parley reused {cached_runs[-1].cached} of {prompt_tokens} prompt tokens")
    ratio = statistics.median(r.first_token for r in cached_runs) / statistics.median(
        r.first_token for r in parley_fresh
    )
    print(f"    cached / fresh: {ratio:.2f}x (target: at most 1.5x)")

    print(f"\n(b) concurrent chats, {args.tokens} tokens each")
    row("", "aggregate t/s", "first tokens s")
    for count in (1, 2, 4):
        for name, rows in ((f"Parley, {count} at once", parley_rows), (f"raw l-c-p, {count} in turn", raw_rows)):
            rate, runs = rows[count]
            row(name, f"{rate:.1f}", " ".join(f"{timed.first_token:.2f}" for timed in runs))
    print(f"    Parley 4 chats / 1 chat: {parley_rows[4][0] / parley_rows[1][0]:.2f}x (target: at least 1.8x)")

    print(f"\n(c) single chat, tokens/s after the first token, median of {args.repeat}")
    parley_rate = statistics.median(timed.rate for timed in parley_single)
    raw_rate = statistics.median(timed.rate for timed in raw_single)
    row("", "Parley", "raw l-c-p")
    row("tokens/s", f"{parley_rate:.1f}", f"{raw_rate:.1f}")
    print(f"    Parley / raw: {parley_rate / raw_rate:.0%} (target: at least 95%)")


if __name__ == "__main__":
    asyncio.run(main())
