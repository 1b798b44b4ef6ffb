"""What a reply keeps of an agent's steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.models.base import ChatMessage


@dataclass(slots=True)
class StepRecord:
    """What the conversation keeps of the steps: assistant tool calls and tool results, in order."""

    messages: list[ChatMessage] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)  # the agents that answered, in order
