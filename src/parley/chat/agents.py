"""An agent as a run uses it: its configuration, its tools (resolved per run), its handoffs, its actions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from parley.config import AgentConfig
from parley.models.base import ChatMessage
from parley.tools.base import NO_ARGUMENTS, Tool, ToolSpec
from parley.tools.registry import ToolRegistry

HANDOFF_PREFIX = "transfer_to_"

KnowledgeTools = Callable[[AgentConfig], Tool | None]
"""An agent's `search_knowledge` tool for one caller (None: it has nothing to search): made for
the agent a run begins with, and again for each agent the run is handed over to."""


class Handoff(Tool):
    """`transfer_to_<agent>`: the model's way to pass the conversation to another agent."""

    def __init__(self, target: AgentConfig) -> None:
        self.target = target.name
        about = target.description or f"the {target.name} agent"
        self.spec = ToolSpec(
            name=f"{HANDOFF_PREFIX}{target.name}",
            description=f"Hand the conversation to {about}; it answers from here on.",
            parameters=NO_ARGUMENTS,
        )

    async def run(self, arguments: dict[str, Any]) -> str:
        return f"The conversation is now with the {self.target} agent."


class Agent:
    def __init__(self, config: AgentConfig, tools: dict[str, Tool], handoffs: list[Handoff]) -> None:
        self.config = config
        self.name = config.name
        self._tools = tools
        self._handoffs = {handoff.spec.name: handoff for handoff in handoffs}

    @classmethod
    def resolve(
        cls, config: AgentConfig, registry: ToolRegistry, agents: dict[str, AgentConfig], extra: Sequence[Tool] = ()
    ) -> Agent:
        """The agent with the tools its patterns name now (an MCP server's list changes over time),
        and `extra` tools made for this run (its `search_knowledge`)."""
        tools = registry.matching(config.tools) if config.tools else {}
        if extra:
            tools = {**tools, **{tool.spec.name: tool for tool in extra}}
        return cls(config, tools, [Handoff(agents[name]) for name in config.handoffs])

    @property
    def uses_tools(self) -> bool:
        return bool(self._tools or self._handoffs)

    def tool_specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in (*self._tools.values(), *self._handoffs.values())]

    def runs(self, name: str) -> bool:
        return name in self._tools or name in self._handoffs

    def tool(self, name: str) -> Tool:
        return self._tools.get(name) or self._handoffs[name]

    def handoff_target(self, tool_name: str) -> str | None:
        handoff = self._handoffs.get(tool_name)
        return None if handoff is None else handoff.target

    def with_prompt(self, messages: list[ChatMessage], replacing: Agent) -> list[ChatMessage]:
        """The messages with this agent's system prompt in place of the agent it takes over from."""
        rest = messages
        old_prompt = replacing.config.system_prompt
        if old_prompt and messages and messages[0].role == "system" and messages[0].content == old_prompt:
            rest = messages[1:]
        if not self.config.system_prompt:
            return list(rest)
        return [ChatMessage(role="system", content=self.config.system_prompt), *rest]


def apply_action(config: AgentConfig | None, text: str) -> str:
    """The user's message through the agent's action its prefix chooses (`Translate to Urdu: ...`)."""
    if config is None or not config.actions:
        return text
    stripped = text.lstrip()
    for action in config.actions:
        if stripped[: len(action.prefix)].casefold() == action.prefix.casefold():
            return action.template.replace("{text}", stripped[len(action.prefix) :].strip())
    return text
