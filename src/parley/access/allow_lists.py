"""A key's allow-lists: the models (a Gate, before anything is generated) and agents it may use."""

from __future__ import annotations

from parley.access.principal import Principal
from parley.chat.admission import Admission
from parley.errors import PermissionDenied
from parley.models.base import ChatRequest
from parley.models.registry import ModelEntry


class ModelAllowList:
    """Refuses a generation on a model the key may not use (403 `model_not_allowed`)."""

    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> Admission | None:
        allowed = principal.models
        if allowed is not None and entry.config.name not in allowed:
            raise PermissionDenied(
                f"this API key may not use model {entry.config.name!r}", param="model", code="model_not_allowed"
            )
        return None


def check_agent(principal: Principal, agent: str) -> None:
    """Refuse an agent the key may not use (403 `agent_not_allowed`). A request that names no agent
    is governed by the model allow-list alone."""
    allowed = principal.agents
    if allowed is not None and agent not in allowed:
        raise PermissionDenied(f"this API key may not use agent {agent!r}", param="agent", code="agent_not_allowed")


def visible_models(principal: Principal, names: list[str]) -> list[str]:
    allowed = principal.models
    return names if allowed is None else [name for name in names if name in allowed]
