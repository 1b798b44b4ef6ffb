"""The one interface every model provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.events import EventBatch

Role = Literal["system", "developer", "user", "assistant", "tool"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of a conversation, in the OpenAI chat shape."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1)
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _has_what_its_role_needs(self) -> ChatMessage:
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        """The message's text, with the text parts of multi-part content joined."""
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def to_openai(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


@dataclass(slots=True)
class GenerationParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(slots=True)
class ChatRequest:
    messages: list[ChatMessage]
    params: GenerationParams = field(default_factory=GenerationParams)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


def estimate_tokens(text: str) -> int:
    """About four ASCII characters a token, and a token for every other character.

    Four characters a token is the rule of thumb for English; Chinese, Japanese or Korean text
    takes about a token a character, so counting it at four would overfill the context.
    """
    ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
    return (ascii_chars + 3) // 4 + len(text) - ascii_chars


class ModelListener(Protocol):
    """Hears what a model's provider notices (for metrics): upstream failures, queue waits."""

    def upstream_failed(self, model: str, kind: str) -> None: ...

    def queue_waited(self, model: str, seconds: float) -> None: ...


EndpointState = Literal["healthy", "cooling", "probing"]


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint of a pooled model, as /ready and /metrics show it."""

    name: str
    state: EndpointState
    outstanding: int  # requests it serves now
    weight: float
    max_concurrent: int | None
    cooldown_left: float  # seconds until it is probed again; 0 unless cooling
    failures: dict[str, int]  # failures so far, by kind (see openai_compat.failure_kind)
    served: int  # requests whose reply it started


class Model(ABC):
    """A chat model. `stream()` yields batches of typed events and stops its generation when closed."""

    provider: ClassVar[str]
    supports_tools: ClassVar[bool] = False

    def __init__(self, name: str, context_size: int | None) -> None:
        self.name = name
        self.context_size = context_size
        # Set by providers that can tell from the model itself (its chat template) that it
        # writes gpt-oss Harmony; others are detected from their first tokens.
        self.template_is_harmony = False
        self.listener: ModelListener | None = None

    def queued(self) -> int | None:
        """Requests waiting for this model's turn; None: it has no queue of its own."""
        return None

    def endpoints(self) -> list[EndpointStatus] | None:
        """The state of each endpoint of a pooled model; None: not a pool."""
        return None

    async def load(self) -> None:  # noqa: B027 - most providers have nothing to load
        """Get ready to serve (load weights, open connections). Called once, off the request path."""

    async def aclose(self) -> None:  # noqa: B027
        """Release what `load` took."""

    async def count_tokens(self, messages: list[ChatMessage]) -> int:
        """Prompt tokens these messages take. This default is an estimate for models whose
        tokenizer Parley can't run: four characters a token, plus four a message for the markup."""
        return sum(estimate_tokens(message.text()) + 4 for message in messages)

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        """Generate a reply, as non-empty batches of the events ready together.

        Closing the iterator early must stop the generation."""
