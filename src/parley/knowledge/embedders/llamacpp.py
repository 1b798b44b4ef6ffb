"""An embedder over a GGUF embedding model run in-process by llama.cpp (llama-cpp-python).

llama.cpp is not thread-safe per model: one worker thread owns the model and embeds one batch at
a time, so the event loop never blocks and concurrent requests queue instead of racing.
Without `path`, the bundled SmolLM2 GGUF is used (fine for tests; a real embedding model such as
nomic-embed or bge in GGUF form gives far better retrieval).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.knowledge.config import EmbedderConfig

_CONTEXT_TOKENS = 512  # a chunk's budget is far below it; longer texts are cut by llama.cpp


class LlamaCppEmbedder:
    def __init__(self, path: Path, config: EmbedderConfig) -> None:
        import llama_cpp  # (imported here: servers with other embedders never load llama.cpp)

        self._llama: Any = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            n_ctx=_CONTEXT_TOKENS,
            n_batch=_CONTEXT_TOKENS,
            n_ubatch=_CONTEXT_TOKENS,
            n_threads=2,
            verbose=False,
        )
        full = int(self._llama.n_embd())
        if config.dimension is not None and config.dimension > full:
            raise ValueError(f"llamacpp embedder: {path.name} makes {full}-dim vectors, fewer than {config.dimension}")
        self._dimension = config.dimension or full
        self._batch_size = config.batch_size
        self._name = f"llamacpp:{path.name}:{self._dimension}"
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-embed")

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def _embed_now(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            # normalize=False: unit length is taken after any truncation to `dimension`.
            batch = self._llama.embed(list(texts[start : start + self._batch_size]), normalize=False, truncate=True)
            vectors += [_unit(_pooled(vector)[: self._dimension]) for vector in batch]
        return vectors

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._embed_now, texts)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._llama.close)
        self._worker.shutdown(wait=True)


def _pooled(vector: Any) -> list[float]:
    """One vector per text: a model without a pooling type gives one per token; those are averaged."""
    if vector and isinstance(vector[0], list):
        count = len(vector)
        return [sum(column) / count for column in zip(*vector, strict=True)]
    return [float(value) for value in vector]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return vector if norm == 0 else [value / norm for value in vector]


async def open_embedder(config: EmbedderConfig) -> LlamaCppEmbedder:
    if config.path is not None:
        path = config.path
    else:
        from parley.models.llamacpp import bundled_model_path

        path = bundled_model_path()
    if not path.is_file():
        raise ValueError(f"llamacpp embedder: no GGUF file at {path}")
    return await asyncio.to_thread(LlamaCppEmbedder, path, config)
