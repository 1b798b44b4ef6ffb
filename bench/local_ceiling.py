"""How much batching can give on this machine: raw llama.cpp, no Parley, no Python sampling.

Decodes 1, 2 and 4 sequences together through llama.cpp's batch API (one token per sequence
per `llama_decode`, greedy, the same GGUF and threads as `bench/local.py`), and prints the
aggregate tokens/s of each and its ratio to one sequence. This is the ceiling for the
`parallel` setting's target (4 chats at least 1.8x one chat's aggregate): Parley's engine
adds its per-step Python on top and cannot batch better than llama.cpp itself does.
Rows for both KV layouts (one stream per sequence, as Parley uses, and llama.cpp's unified cache).

    uv run python bench/local_ceiling.py [--tokens 128] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from parley.models.llamacpp import bundled_model_path

PROMPT = "Write a short poem about a lighthouse keeper and the sea at night."


def context(path: Path, threads: int, sequences: int, unified: bool) -> tuple[Any, Any, Any]:
    import llama_cpp
    from llama_cpp import _internals
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    model = _internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 1024 * sequences
    params.n_seq_max = sequences
    params.kv_unified = unified
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
    return llama_cpp, model, ctx


def decode_rate(path: Path, threads: int, sequences: int, tokens: int, unified: bool) -> float:
    """Aggregate tokens/s of `sequences` replies decoded together, after their prompts."""
    lib, model, ctx = context(path, threads, sequences, unified)
    prompt = model.tokenize(PROMPT.encode(), add_bos=True, special=False)
    batch = lib.llama_batch_init(512, 0, 1)
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())

    def put(items: list[tuple[int, int, int, bool]]) -> None:
        for index, (token, position, seq, logits) in enumerate(items):
            batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
            batch.seq_id[index][0], batch.logits[index] = seq, logits
        batch.n_tokens = len(items)
        if lib.llama_decode(ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    for seq in range(sequences):  # the prompts, one sequence at a time (not timed)
        put([(token, pos, seq, pos == len(prompt) - 1) for pos, token in enumerate(prompt)])
    last = [lib.llama_sampler_sample(sampler, ctx.ctx, -1)] * sequences
    started = time.perf_counter()
    for step in range(tokens):
        put([(last[seq], len(prompt) + step, seq, True) for seq in range(sequences)])
        last = [lib.llama_sampler_sample(sampler, ctx.ctx, seq) for seq in range(sequences)]
    seconds = time.perf_counter() - started
    lib.llama_sampler_free(sampler)
    lib.llama_batch_free(batch)
    ctx.close()
    model.close()
    return sequences * tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    path = args.model or bundled_model_path()
    print(f"raw llama.cpp batched decode, {path.name}, {args.threads} threads, {args.tokens} tokens a sequence")
    print("| KV cache | sequences | tokens/s (median of rounds) | vs 1 sequence |")
    print("|---|---|---|---|")
    for unified in (False, True):
        single = 0.0
        for sequences in (1, 2, 4):
            rates = [decode_rate(path, args.threads, sequences, args.tokens, unified) for _ in range(args.rounds)]
            rate = statistics.median(rates)
            single = single or rate
            layout = "unified" if unified else "per sequence"
            print(f"| {layout} | {sequences} | {rate:.1f} | {rate / single:.2f}x |")


if __name__ == "__main__":
    main()
