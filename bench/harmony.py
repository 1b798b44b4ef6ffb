"""The Harmony parser's cost: throughput and per-token time, next to the rest of a token's path.

Builds a few MB of realistic gpt-oss output (reasoning, preambles, JSON tool calls, markdown
answers with code full of `<`), then feeds it to `HarmonyParser` in token-sized pieces (1-7
characters, ~4 on average; special tokens arrive whole, as a detokenizer yields them), in larger
chunks, and whole; plain non-Harmony text shows the pass-through cost. Prints MB/s and
microseconds per chunk (best of --repeat).

The reference for "the rest of a token's path" is what Parley's OpenAI-compatible provider and
OpenAI transport do per streamed token, measured the same way in this process: decode one
upstream SSE event with Parley's `SSEDecoder`, `json.loads` its payload, and `json.dumps` the
outgoing delta. The table gives the parser's per-token time as a share of that work plus its own.

    uv run python bench/harmony.py [--mb 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable

from parley.events import ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta
from parley.models.harmony import HarmonyParser
from parley.models.sse_decoder import SSEDecoder

PHRASES = [
    "the user asks about the weather",
    "we need to call a function",
    "then answer with a table",
    "consider edge cases and units",
    "celsius or fahrenheit",
    "maybe also check the forecast for tomorrow",
    "let's think step by step",
    "compute 2 + 2 = 4 and verify",
    "if x < y then swap them",
    "a -> b",
]
CITIES = ["Tokyo", "Paris", "New York City", "São Paulo", "Zürich", "東京", "Reykjavík"]
CODE = '```html\n<div class="card">\n  <p>{temp} &deg;C</p>\n</div>\n```\nIn JS: `if (a < b && b > c) {{ go(); }}`\n'
SPECIAL = re.compile(r"<\|[a-z]+\|>")


def sentence(rng: random.Random, phrases: int) -> str:
    return " ".join(rng.choice(PHRASES) for _ in range(phrases)).capitalize() + ". "


def conversation(rng: random.Random) -> str:
    """One completion: reasoning, maybe a preamble and calls, maybe a final answer."""
    parts = ["<|channel|>analysis<|message|>" + "".join(sentence(rng, rng.randint(2, 6)) for _ in range(8))]
    if rng.random() < 0.5:
        parts.append("<|end|><|start|>assistant<|channel|>commentary<|message|>" + sentence(rng, 3))
        for _ in range(rng.randint(1, 3)):
            args = json.dumps({"city": rng.choice(CITIES), "unit": "celsius", "days": rng.randint(1, 7)})
            header = rng.choice(
                [
                    "<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json",
                    "<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json",
                ]
            )
            parts.append(header + "<|message|>" + args)
        parts.append("<|call|>")
    else:
        answer = "".join(sentence(rng, rng.randint(1, 5)) for _ in range(6))
        parts.append("<|end|><|start|>assistant<|channel|>final<|message|>" + answer + CODE.format(temp=20))
        parts.append("<|return|>")
    return "".join(parts)


def transcript(chars: int) -> str:
    rng = random.Random(0)
    parts, size = [], 0
    while size < chars:
        parts.append(conversation(rng))
        size += len(parts[-1])
    return "".join(parts)


def token_pieces(text: str, rng: random.Random) -> list[str]:
    """Cut like a detokenizer: special tokens whole, other text in pieces of 1-7 characters."""
    pieces: list[str] = []
    pos = 0
    for match in [*SPECIAL.finditer(text), None]:
        end = match.start() if match else len(text)
        while pos < end:
            step = rng.randint(1, 7)
            pieces.append(text[pos : min(pos + step, end)])
            pos += step
        pos = end
        if match:
            pieces.append(match.group())
            pos = match.end()
    return pieces


def fixed_pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def feed_all(pieces: list[str]) -> list[StreamEvent]:
    parser = HarmonyParser()
    events: list[StreamEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def best_time(work: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def summary(events: list[StreamEvent]) -> tuple[int, int, int]:
    reasoning = sum(len(e.text) for e in events if isinstance(e, ReasoningDelta))
    content = sum(len(e.text) for e in events if isinstance(e, TextDelta))
    arguments = sum(len(e.arguments) for e in events if isinstance(e, ToolCallDelta))
    return reasoning, content, arguments


def reference_per_token(tokens: int, repeat: int) -> float:
    """Seconds per token for Parley's per-token path outside the parser (see the module docstring)."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-oss-20b",
        "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}],
    }
    event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def work() -> None:
        decoder = SSEDecoder()
        for _ in range(tokens):
            for data in decoder.feed(event):
                delta = json.loads(data)["choices"][0]["delta"]
                json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    return best_time(work, repeat) / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=4.0, help="transcript size in MB of characters")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    text = transcript(int(args.mb * 1_000_000))
    megabytes = len(text.encode()) / 1e6
    plain = SPECIAL.sub("", text)
    tokens = token_pieces(text, random.Random(1))
    cases = {
        "Harmony, token-sized (~4 chars)": (text, tokens),
        "Harmony, 64-char chunks": (text, fixed_pieces(text, 64)),
        "Harmony, 4096-char chunks": (text, fixed_pieces(text, 4096)),
        "Harmony, whole": (text, [text]),
        "plain text, token-sized": (plain, token_pieces(plain, random.Random(1))),
    }
    expected = summary(feed_all([text]))
    print(f"transcript: {megabytes:.2f} MB, {len(tokens):,} token-sized pieces\n")
    print(f"{'feeding':34} {'chunks':>10} {'MB/s':>8} {'µs/chunk':>9}")
    per_token = 0.0
    for name, (source, pieces) in cases.items():
        if source is text:
            assert summary(feed_all(pieces)) == expected, f"{name}: a different parse"
        seconds = best_time(lambda pieces=pieces: feed_all(pieces), args.repeat)  # type: ignore[misc]
        size = len(source.encode()) / 1e6
        micro = seconds / len(pieces) * 1e6
        if name.startswith("Harmony, token"):
            per_token = seconds / len(pieces)
        print(f"{name:34} {len(pieces):>10,} {size / seconds:>8.1f} {micro:>9.2f}")

    reference = reference_per_token(200_000, args.repeat)
    share = per_token / (per_token + reference)
    print("\nper token (token-sized pieces):")
    print(f"  Harmony parser                                         {per_token * 1e6:6.2f} µs")
    print(f"  reference: SSEDecoder.feed + json.loads + json.dumps   {reference * 1e6:6.2f} µs")
    print(f"  parser's share of the two together                     {share:6.1%}")


if __name__ == "__main__":
    main()
