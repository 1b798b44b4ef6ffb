"""ChatService: turns a chat request into a Run on the right model, with agent and defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from parley.access.allow_lists import check_agent
from parley.access.principal import OPEN, Principal
from parley.chat.admission import NOTHING_ADMITTED, Admitted, Gate, admit_all
from parley.chat.agent_loop import AgentLoop
from parley.chat.agents import Agent, KnowledgeTools, apply_action
from parley.chat.run import Run
from parley.config import AgentConfig, SamplingDefaults
from parley.errors import InvalidRequest
from parley.models.base import ChatMessage, ChatRequest
from parley.models.registry import ModelEntry, ModelRegistry
from parley.tools.config import ToolSettings
from parley.tools.registry import ToolRegistry

T = TypeVar("T")


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        agents: list[AgentConfig],
        track: Callable[[Run], None] | None = None,
        gates: Sequence[Gate] = (),
        tools: ToolRegistry | None = None,
        tool_settings: ToolSettings | None = None,
    ) -> None:
        self._registry = registry
        self._agents = {agent.name: agent for agent in agents}
        self._track = track  # told of every run begun (the server's drain waits for them)
        self._gates = list(gates)  # asked before every generation (limits, budgets, metrics)
        self._tools = tools or ToolRegistry(ToolSettings(), [])
        self._model_result_chars = (tool_settings or ToolSettings()).model_result_chars

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

    def agents(self) -> list[AgentConfig]:
        return list(self._agents.values())

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
        knowledge: KnowledgeTools | None = None,
    ) -> Run:
        """Check and admit the request, and begin generating; nothing runs until iterated."""
        entry, agent_config = self.resolve(model, agent, principal)
        request = with_system_prompt(request, agent_config, apply_actions=True)
        admitted = await self.admit(principal, entry, request, agent_config)
        return self.begin(entry, request, admitted, agent_config, knowledge)

    async def admit(
        self, principal: Principal, entry: ModelEntry, request: ChatRequest, agent: AgentConfig | None = None
    ) -> Admitted:
        """Everything that may refuse a generation, before anything of it is stored or begun."""
        needs_tools = bool(request.tools) or (agent is not None and bool(agent.tools or agent.handoffs))
        if needs_tools and not entry.model.supports_tools:
            who = f"agent {agent.name!r} calls tools, but " if agent is not None and not request.tools else ""
            raise InvalidRequest(
                f"{who}model {entry.config.name!r} ({entry.model.provider}) does not support tools", param="tools"
            )
        return await admit_all(self._gates, principal, entry, request)

    def begin(
        self,
        entry: ModelEntry,
        request: ChatRequest,
        admitted: Admitted = NOTHING_ADMITTED,
        agent: AgentConfig | None = None,
        knowledge: KnowledgeTools | None = None,
    ) -> Run:
        """Begin an admitted generation: one model call, or an agent's steps. `knowledge`: each
        agent's `search_knowledge` tool, given to it (and to an agent it hands over to) when its
        model calls tools."""
        request = with_defaults(request, agent.defaults if agent is not None else None, entry.config.defaults)

        def resolve(config: AgentConfig, model: ModelEntry) -> Agent:
            search = knowledge(config) if knowledge is not None and model.model.supports_tools else None
            return Agent.resolve(config, self._tools, self._agents, [] if search is None else [search])

        def handed_over_to(name: str) -> Agent:
            config = self.agent(name)
            return resolve(config, self._registry.get(config.model))

        resolved = resolve(agent, entry) if agent is not None else None
        if resolved is not None and resolved.uses_tools:
            loop = AgentLoop(
                resolved,
                request,
                lambda step_agent: entry if step_agent is resolved else self._registry.get(step_agent.config.model),
                handed_over_to,
                model_result_chars=self._model_result_chars,
            )
            run = Run(entry.config.name, loop.batches())
            run.steps = loop.record
        else:
            run = Run(entry.config.name, entry.stream(request), entry.normaliser(request))
        admitted.attach(run)
        if self._track is not None:
            self._track(run)
        return run


def with_system_prompt(request: ChatRequest, agent: AgentConfig | None, *, apply_actions: bool = False) -> ChatRequest:
    """The request as the agent's model sees it: its system prompt first, and (for a new message) the
    action the user's message begins with applied to it."""
    if agent is None:
        return request
    messages = request.messages
    if apply_actions and agent.actions and messages and messages[-1].role == "user":
        last = messages[-1]
        acted = apply_action(agent, last.text())
        if acted != last.text():
            messages = [*messages[:-1], ChatMessage(role="user", content=acted)]
    if agent.system_prompt:  # (the `default` agent adds no prompt)
        messages = [ChatMessage(role="system", content=agent.system_prompt), *messages]
    return request if messages is request.messages else replace(request, messages=messages)


def with_defaults(request: ChatRequest, *layers: SamplingDefaults | None) -> ChatRequest:
    """The request's sampling, with what it leaves unset taken from the first layer that sets it."""
    params = request.params
    given = [layer for layer in layers if layer is not None]
    if not any(
        (params.temperature is None and layer.temperature is not None)
        or (params.top_p is None and layer.top_p is not None)
        or (params.max_tokens is None and layer.max_tokens is not None)
        for layer in given
    ):  # (checked first: most requests have nothing to fill in, and every request passes here)
        return request
    filled = replace(
        params,
        temperature=_first(params.temperature, *(layer.temperature for layer in given)),
        top_p=_first(params.top_p, *(layer.top_p for layer in given)),
        max_tokens=_first(params.max_tokens, *(layer.max_tokens for layer in given)),
    )
    return replace(request, params=filled)


def _first(*values: T | None) -> T | None:
    return next((value for value in values if value is not None), None)
