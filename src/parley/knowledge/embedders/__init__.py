"""The embedders, one module per provider; `open_embedder` picks the configured one."""

from __future__ import annotations

import importlib
from typing import Protocol

from parley.knowledge.base import Embedder
from parley.knowledge.config import EmbedderConfig


class _ProviderModule(Protocol):
    async def open_embedder(self, config: EmbedderConfig) -> Embedder: ...


async def open_embedder(config: EmbedderConfig) -> Embedder:
    """The configured embedder, loaded (a model in a worker thread, or a client of an upstream)."""
    # Imported when chosen: a server with the default embedder never loads the others' clients.
    module: _ProviderModule = importlib.import_module(f"{__name__}.{config.provider}")
    return await module.open_embedder(config)
