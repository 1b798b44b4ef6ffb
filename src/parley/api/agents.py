"""`GET /api/agents`: the agents a caller may chat with, for a front end's picker."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from parley.access.principal import principal_of
from parley.api.deps import ChatServiceDep
from parley.api.input_limits import CheckedJSONRoute

router = APIRouter(prefix="/api", tags=["Parley chat API"], route_class=CheckedJSONRoute)


class AgentOut(BaseModel):
    name: str = Field(description="Pass as `agent` to `POST /api/chat`.")
    description: str = Field(description="What the agent is for; may be empty.")
    model: str | None = Field(description="The model it runs on; null: the server's default model.")


class AgentList(BaseModel):
    data: list[AgentOut] = Field(description="In configuration order; `default` (no extra prompt) always among them.")


@router.get("/agents")
async def list_agents(request: Request, chat: ChatServiceDep) -> AgentList:
    """The configured agents this key may use (every one, on a server that runs open)."""
    allowed = principal_of(request).agents
    return AgentList(
        data=[
            AgentOut(name=agent.name, description=agent.description, model=agent.model)
            for agent in chat.agents()
            if allowed is None or agent.name in allowed
        ]
    )
