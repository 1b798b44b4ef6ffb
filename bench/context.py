"""What fitting a long conversation into the context costs, with the real SmolLM2 tokenizer.

A 1,000-message conversation (about 30,000 tokens) is fitted to contexts of 512, 2,048 and
8,192 tokens through `fit_to_context` and the llama.cpp model's own `count_tokens` (chat
template and tokenizer). For each: how many candidate histories were counted, how many tokens
that tokenized in all, the kept prompt, and the median time of a fit; beside it the time of one
count of the whole conversation, the least a search that starts from the oldest turn must pay.

    uv run python bench/context.py [--exchanges 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from parley.chat.context import fit_to_context
from parley.config import LlamaCppConfig
from parley.models.base import ChatMessage
from parley.models.llamacpp import LlamaCppModel


class CountingModel(LlamaCppModel):
    """The llama.cpp model, keeping a tally of what it was asked to count."""

    counts = 0
    tokens = 0

    async def count_tokens(self, messages: list[ChatMessage]) -> int:
        tokens = await super().count_tokens(messages)
        self.counts += 1
        self.tokens += tokens
        return tokens


def conversation(exchanges: int) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content="You are a terse assistant.")]
    for index in range(exchanges):
        question = f"Question {index}: tell me about the sea and its ships, number {index}, in some detail."
        answer = f"Answer {index}: the sea is wide and ships sail on it; this is reply number {index}."
        messages += [ChatMessage(role="user", content=question), ChatMessage(role="assistant", content=answer)]
    messages.append(ChatMessage(role="user", content="And the last question?"))
    return messages


async def measure(context: int, messages: list[ChatMessage], repeat: int) -> None:
    model = CountingModel(LlamaCppConfig(name="smollm2", provider="llamacpp", context_size=context, threads=1))
    await model.load()
    try:
        started = time.perf_counter()
        whole = await model.count_tokens(messages)
        whole_ms = (time.perf_counter() - started) * 1000
        times = []
        for _ in range(repeat):
            model.counts = model.tokens = 0
            started = time.perf_counter()
            fitted = await fit_to_context(model, messages, max_tokens=None)
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"{context:>7} {len(messages):>8} {whole:>7} {whole_ms:>8.1f} {model.counts:>6} {model.tokens:>8} "
            f"{len(fitted.messages):>5} {fitted.prompt_tokens:>6} {statistics.median(times):>7.1f}"
        )
    finally:
        await model.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exchanges", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    messages = conversation(args.exchanges)
    columns = [("context", 7), ("messages", 8), ("tokens", 7), ("whole ms", 8), ("counts", 6), ("counted", 8)]
    columns += [("kept", 5), ("prompt", 6), ("fit ms", 7)]
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for context in (512, 2048, 8192):
        await measure(context, messages, args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
