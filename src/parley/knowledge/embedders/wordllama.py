"""The default embedder: WordLlama, whose weights and tokenizer ship inside its wheel.

It averages learned token embeddings (no transformer pass), so it embeds thousands of texts a
second on a CPU and needs no download: the right default for a server that must work offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parley.knowledge.config import EmbedderConfig
from parley.knowledge.embedders import DEFAULT_WORDLLAMA_DIMENSION

_CONFIG = "l2_supercat"
_DIMENSIONS = (64, 128, 256, 512, 1024)  # Matryoshka-trained: any prefix of these sizes is a model


class WordLlamaEmbedder:
    def __init__(self, config: EmbedderConfig) -> None:
        import wordllama  # (imported here: it loads numpy and tokenizers)

        dimension = config.dimension or DEFAULT_WORDLLAMA_DIMENSION
        if dimension not in _DIMENSIONS:
            raise ValueError(f"wordllama embedder: dimension must be one of {', '.join(map(str, _DIMENSIONS))}")
        package = Path(wordllama.__file__).parent
        # The wheel holds the 256-dim weights; larger sizes would need a download, which we never do.
        self._model = wordllama.WordLlama.load(
            config=config.model or _CONFIG,
            cache_dir=package,
            dim=256,
            trunc_dim=None if dimension == 256 else dimension,
            disable_download=True,
        )
        self._dimension = dimension
        self._name = f"wordllama:{config.model or _CONFIG}:{dimension}"
        self._batch_size = config.batch_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, as the model splits them (for chunk budgets)."""
        return [len(ids) for ids in self._model.tokenize(list(texts))]

    def embed_now(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed in the calling thread (ingestion workers already run in one)."""
        if not texts:
            return []
        vectors = self._model.embed(list(texts), norm=True, batch_size=self._batch_size)
        return np.asarray(vectors, dtype=np.float32).tolist()  # type: ignore[no-any-return]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_now, texts)

    async def aclose(self) -> None:
        return None


async def open_embedder(config: EmbedderConfig) -> WordLlamaEmbedder:
    return await asyncio.to_thread(WordLlamaEmbedder, config)
