"""Tether (a desktop app's backend): its JSON chat reply and `GET /model`.

Tether's client posts `{"message", "history"?, "model"?, "temperature"?, "max_tokens"?}` to
`POST /chat` and reads `{"response", "thinking", "tokens_used", "model", "finish_reason"}`.
`POST /chat` is shared with StreamForge, which streams: `parley.api.compat.streamforge` serves
the route and answers with `tether_reply` when the request asks for JSON. Tether's settings
(`TETHER_*`) are aliases of Parley's own (`parley.config.TetherEnvironment`).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from parley.api.deps import RegistryDep
from parley.chat.run import Run
from parley.models.registry import ModelState

router = APIRouter(tags=["Tether"])

_MODEL_TYPES = {"llamacpp": "local", "openai": "openai"}  # else "custom"


class TetherReply(BaseModel):
    """`POST /chat`'s JSON reply (Tether's `ChatResponse`)."""

    response: str = Field(description="The answer.")
    thinking: str | None = Field(description="The model's reasoning, for models that reason.")
    tokens_used: int | None = Field(description="Prompt and completion tokens together.")
    model: str
    finish_reason: Literal["stop", "length", "error"]


def tether_reply(run: Run) -> TetherReply:
    return TetherReply(
        response=run.text,
        thinking=run.reasoning,
        tokens_used=run.usage.total_tokens if run.usage is not None else None,
        model=run.model,
        finish_reason="length" if run.finish_reason == "length" else "stop",
    )


class TetherModel(BaseModel):
    """`GET /model` (Tether's `ModelInfo`): the default model."""

    name: str
    loaded: bool
    type: Literal["local", "openai", "custom"]
    context_length: int | None


@router.get("/model")
async def model_info(registry: RegistryDep) -> TetherModel:
    """The default model: its name, whether it is loaded, where it runs, its context length."""
    entry = registry.get(None)
    kind = _MODEL_TYPES.get(entry.model.provider, "custom")
    return TetherModel(
        name=entry.config.name,
        loaded=entry.state is ModelState.READY,
        type=kind,
        context_length=entry.model.context_size,
    )
