"""The models this server offers, built from config and loaded in the background."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from parley.config import FakeConfig, LlamaCppConfig, ModelConfig, OpenAICompatConfig
from parley.errors import ModelNotFound, ModelNotReady
from parley.models.base import ChatRequest, Model
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
