"""The embedders, one module per provider; `open_embedder` picks the configured one."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Protocol

from parley.knowledge.base import Embedder
from parley.knowledge.config import EmbedderConfig

DEFAULT_WORDLLAMA_DIMENSION = 256


class _ProviderModule(Protocol):
    async def open_embedder(self, config: EmbedderConfig) -> Embedder: ...


async def open_embedder(config: EmbedderConfig) -> Embedder:
    """The configured embedder, loaded (a model in a worker thread, or a client of an upstream)."""
    # Imported when chosen: a server with the default embedder never loads the others' clients.
    module: _ProviderModule = importlib.import_module(f"{__name__}.{config.provider}")
    return await module.open_embedder(config)


class SharedEmbedder:
    """The server's one embedder (`/v1/embeddings` and the knowledge base), loaded on first use:
    a server that never embeds never pays its load time (about 1.5 s for WordLlama here).

    A load that failed is tried again by the next use (an upstream may be back)."""

    def __init__(self, config: EmbedderConfig) -> None:
        self._config = config
        self._loading: asyncio.Task[Embedder] | None = None

    @property
    def dimension_hint(self) -> int | None:
        """The vectors' size, if known without loading (once loaded, or set in the config)."""
        if self._loading is not None and self._loading.done() and self._loading.exception() is None:
            return self._loading.result().dimension
        if self._config.dimension is not None:
            return self._config.dimension
        return DEFAULT_WORDLLAMA_DIMENSION if self._config.provider == "wordllama" else None

    async def get(self) -> Embedder:
        if self._loading is None or (self._loading.done() and self._loading.exception() is not None):
            self._loading = asyncio.ensure_future(open_embedder(self._config))
        return await asyncio.shield(self._loading)

    async def aclose(self) -> None:
        loading, self._loading = self._loading, None
        if loading is None:
            return
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
        elif loading.exception() is None:
            await loading.result().aclose()
