"""The typed events that flow from every model to every transport.

Treated as immutable, but not frozen: a frozen dataclass takes twice as long to build, and
one event is built for every token of every stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# "max_steps": an agent used all its steps (model, tools, model ...) without a final answer.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled", "error", "max_steps"]


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
    server: bool = False  # a call of a tool Parley runs itself (an agent's), not one for the client


@dataclass(slots=True)
class ToolResult:
    """What a tool Parley ran answered (`output`, possibly long), or why it failed (`error`)."""

    id: str
    name: str
    output: str
    error: str | None
    duration_ms: float


@dataclass(slots=True)
class StepStart:
    """An agent calls its model again, with the results of the tools it asked for (steps count from 1)."""

    step: int


@dataclass(slots=True)
class AgentHandoff:
    """The reply goes on under another agent (its prompt, model and tools)."""

    from_agent: str
    to_agent: str


@dataclass(slots=True)
class SourcePassage:
    """A passage retrieved from a collection for this reply; the model cites it as `[index]`."""

    index: int  # from 1, as cited
    document_id: str
    title: str
    uri: str | None
    page: int | None  # from 1, for paged documents (PDF)
    chunk_id: str
    text: str
    score: float


@dataclass(slots=True)
class PendingSource:
    """A document of a searched collection that is not yet searchable (still being indexed)."""

    document_id: str
    title: str
    state: str  # "queued" or "indexing"
    progress: float | None  # 0..1 while indexing


@dataclass(slots=True)
class Sources:
    """What the reply draws on: retrieved before the first token, so it comes first."""

    passages: list[SourcePassage]
    pending: list[PendingSource]


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


StreamEvent = (
    TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish | ToolResult | StepStart | AgentHandoff | Sources
)
# What became available together: one upstream read, or the tokens llama.cpp made while the
# consumer was busy. Passing events on in batches keeps the per-token cost of every layer low.
EventBatch = Sequence[StreamEvent]
