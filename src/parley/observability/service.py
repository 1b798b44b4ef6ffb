"""Observability's one object: made in `create_app`, started and closed in the lifespan.

Metrics are collected when someone can read them: with `metrics_port` set, or with an admin
key set (the only key `/metrics` on the main port answers). Otherwise, and with `metrics = false`,
nothing of them is built and requests pay nothing for them.
"""

from __future__ import annotations

import os

from starlette.types import Scope

from parley.chat.service import ChatService
from parley.config import Settings
from parley.models.registry import ModelRegistry
from parley.observability.exposition import MetricsServer
from parley.observability.generations import GenerationGate
from parley.observability.metrics import Metrics
from parley.observability.pools import PoolCollector
from parley.observability.routes import route_of
from parley.store import ConversationStore


class Observability:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        admin_key = os.environ.get(settings.admin_key_env) or None
        self.wanted = settings.metrics and (settings.metrics_port is not None or admin_key is not None)
        self.separate_port = settings.metrics_port is not None
        self.admin_key: str | None = None
        self.metrics: Metrics | None = None  # while the app runs, when wanted
        self._server: MetricsServer | None = None

    async def start(self, chat: ChatService, models: ModelRegistry, store: ConversationStore) -> None:
        settings = self._settings
        if self.wanted:
            metrics = Metrics()
            metrics.watch_queues(models, lambda: store.queued_writes)
            metrics.registry.register(PoolCollector(models))
            for entry in models.entries():
                entry.model.listener = metrics
            store.observe_writes(metrics.store_wrote)
            self.admin_key = os.environ.get(settings.admin_key_env) or None
            if settings.metrics_port is not None:
                self._server = MetricsServer(metrics.registry)
                await self._server.start(settings.host, settings.metrics_port)
            self.metrics = metrics
        if self.wanted or settings.log_format == "json":
            chat.add_gate(GenerationGate(self.metrics))

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.aclose()
            self._server = None
        self.metrics = None

    def rate_limited(self, kind: str, key_alias: str) -> None:
        """For the limits gate: count a refusal (nothing when metrics are off)."""
        if self.metrics is not None:
            self.metrics.rate_limited(kind, key_alias)

    def request_ended(self, scope: Scope, status: int, seconds: float) -> None:
        """The request edge's report of each HTTP request (see RequestContextMiddleware)."""
        metrics = self.metrics
        if metrics is not None:
            metrics.request_ended(route_of(scope), scope["method"], status, seconds)
