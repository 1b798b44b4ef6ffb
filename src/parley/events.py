"""The typed events that flow from every model to every transport.

Treated as immutable, but not frozen: a frozen dataclass takes twice as long to build, and
one event is built for every token of every stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled", "error"]


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of one tool call; `index` ties the pieces of a call together."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None  # prompt tokens served from a cache, when the model knows

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Finish:
    """The reply is over. Every model ends its stream with exactly one, as its last event."""

    reason: FinishReason


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish
# What became available together: one upstream read, or the tokens llama.cpp made while the
# consumer was busy. Passing events on in batches keeps the per-token cost of every layer low.
EventBatch = Sequence[StreamEvent]
