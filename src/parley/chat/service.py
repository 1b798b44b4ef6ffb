"""ChatService: turns a chat request into a Run on the right model, with agent and defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from parley.access.allow_lists import check_agent
from parley.access.principal import OPEN, Principal
from parley.chat.admission import NOTHING_ADMITTED, Admitted, Gate, admit_all
from parley.chat.run import Run
from parley.config import AgentConfig
from parley.errors import InvalidRequest
from parley.models.base import ChatMessage, ChatRequest
from parley.models.registry import ModelEntry, ModelRegistry

T = TypeVar("T")


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        agents: list[AgentConfig],
        track: Callable[[Run], None] | None = None,
        gates: Sequence[Gate] = (),
    ) -> None:
        self._registry = registry
        self._agents = {agent.name: agent for agent in agents}
        self._track = track  # told of every run begun (the server's drain waits for them)
        self._gates = list(gates)  # asked before every generation (limits, budgets, metrics)

    def add_gate(self, gate: Gate) -> None:
        self._gates.append(gate)

    def agent(self, name: str) -> AgentConfig:
        agent = self._agents.get(name)
        if agent is None:
            known = ", ".join(self._agents) or "none"
            raise InvalidRequest(
                f"agent {name!r} does not exist; configured agents: {known}", param="agent", code="agent_not_found"
            )
        return agent

    def resolve(
        self, model: str | None, agent: str | None, principal: Principal = OPEN
    ) -> tuple[ModelEntry, AgentConfig | None]:
        """The model a request runs on (its own choice, else its agent's, else the default)."""
        agent_config = self.agent(agent) if agent is not None else None
        if agent is not None and principal.agents is not None:
            check_agent(principal, agent)
        if model is None and agent_config is not None:
            model = agent_config.model
        return self._registry.get(model), agent_config

    async def start(
        self,
        request: ChatRequest,
        model: str | None = None,
        agent: str | None = None,
        principal: Principal = OPEN,
    ) -> Run:
        """Check and admit the request, and begin generating; nothing runs until iterated."""
        entry, agent_config = self.resolve(model, agent, principal)
        request = with_system_prompt(request, agent_config)
        admitted = await self.admit(principal, entry, request)
        return self.begin(entry, request, admitted)

    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> Admitted:
        """Everything that may refuse a generation, before anything of it is stored or begun."""
        if request.tools and not entry.model.supports_tools:
            raise InvalidRequest(
                f"model {entry.config.name!r} ({entry.model.provider}) does not support tools",
                param="tools",
            )
        return await admit_all(self._gates, principal, entry, request)

    def begin(self, entry: ModelEntry, request: ChatRequest, admitted: Admitted = NOTHING_ADMITTED) -> Run:
        """Begin an admitted generation."""
        defaults = entry.config.defaults
        params = request.params
        if (
            (params.temperature is None and defaults.temperature is not None)
            or (params.top_p is None and defaults.top_p is not None)
            or (params.max_tokens is None and defaults.max_tokens is not None)
        ):  # (checked first: most requests have nothing to fill in, and every request passes here)
            params = replace(
                params,
                temperature=_first(params.temperature, defaults.temperature),
                top_p=_first(params.top_p, defaults.top_p),
                max_tokens=_first(params.max_tokens, defaults.max_tokens),
            )
            request = replace(request, params=params)
        run = Run(entry.config.name, entry.model.stream(request), entry.normaliser(request))
        admitted.attach(run)
        if self._track is not None:
            self._track(run)
        return run


def with_system_prompt(request: ChatRequest, agent: AgentConfig | None) -> ChatRequest:
    if agent is None or not agent.system_prompt:  # (the `default` agent adds no prompt)
        return request
    system = ChatMessage(role="system", content=agent.system_prompt)
    return replace(request, messages=[system, *request.messages])


def _first(value: T | None, default: T | None) -> T | None:
    return value if value is not None else default
