"""The models this server offers, built from config and loaded in the background."""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from parley.config import FakeConfig, LlamaCppConfig, ModelConfig, OpenAICompatConfig
from parley.errors import ModelNotFound, ModelNotReady
from parley.events import EventBatch
from parley.models.base import ChatRequest, Model
from parley.models.failover import Candidate, first_to_start
from parley.models.output import Normaliser

log = logging.getLogger("parley.models")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True)
class ModelEntry:
    config: ModelConfig
    model: Model
    state: ModelState = ModelState.LOADING
    error: str | None = None
    fallbacks: list[ModelEntry] = field(default_factory=list)  # config.fallbacks, resolved

    def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        """The model's reply; with fallbacks, the first of them to start one when this model fails first."""
        if not self.fallbacks:
            return self.model.stream(request)
        candidates: list[Candidate] = [(self.config.name, self.model.stream)]
        for entry in self.fallbacks:
            # A fallback that isn't loaded, or can't take the request's tools, is passed over.
            if entry.state is ModelState.READY and (request.tools is None or entry.model.supports_tools):
                candidates.append((entry.config.name, entry.model.stream))
        return first_to_start(candidates, request)

    def normaliser(self, request: ChatRequest) -> Normaliser | None:
        """What the model's batches for this request go through: Harmony parsing, the reasoning policy."""
        return Normaliser.for_request(
            self.config.harmony, self.model.template_is_harmony, request, send_reasoning=self.config.send_reasoning
        )


def build_model(config: ModelConfig) -> Model:
    if isinstance(config, FakeConfig):
        from parley.models.fake import FakeModel

        return FakeModel(config)
    if isinstance(config, OpenAICompatConfig):
        if config.endpoints is not None:
            from parley.models.pool import UpstreamPool

            return UpstreamPool(config)
        from parley.models.openai_compat import OpenAICompatModel

        return OpenAICompatModel(config)
    if isinstance(config, LlamaCppConfig):
        from parley.models.llamacpp import LlamaCppModel

        return LlamaCppModel(config)
    raise AssertionError(f"unknown provider config: {config!r}")


class ModelRegistry:
    def __init__(self, configs: list[ModelConfig]) -> None:
        self._entries = {config.name: ModelEntry(config, build_model(config)) for config in configs}
        self.default_name = configs[0].name
        for entry in self._entries.values():
            entry.fallbacks = [self._entries[name] for name in entry.config.fallbacks]

    async def load_all(self) -> None:
        for entry in self._entries.values():
            try:
                await entry.model.load()
            except Exception as exc:  # a model that can't load is reported, not fatal
                entry.state, entry.error = ModelState.FAILED, f"{type(exc).__name__}: {exc}"
                log.error("model %s failed to load: %s", entry.config.name, entry.error)
            else:
                entry.state = ModelState.READY
                log.info("model %s ready (%s)", entry.config.name, entry.model.provider)

    async def aclose(self) -> None:
        for entry in self._entries.values():
            await entry.model.aclose()

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, name: str | None) -> ModelEntry:
        entry = self._entries.get(name or self.default_name)
        if entry is None:
            known = ", ".join(self._entries)
            raise ModelNotFound(f"model {name!r} does not exist; this server has: {known}", param="model")
        if entry.state is ModelState.LOADING:
            raise ModelNotReady(f"model {entry.config.name!r} is still loading; try again shortly")
        if entry.state is ModelState.FAILED:
            raise ModelNotReady(f"model {entry.config.name!r} failed to load: {entry.error}")
        return entry
