"""What the store hands out: plain frozen records, never live ORM objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from parley.models.base import ChatMessage, ToolCall

Role = Literal["system", "developer", "user", "assistant", "tool"]
Status = Literal["complete", "cancelled", "failed", "streaming"]
FinalStatus = Literal["complete", "cancelled", "failed"]


class TimingLike(Protocol):
    """A reply's timing; `parley.chat.run.Timing` (from `Run.timing()`) is one."""

    @property
    def time_to_first_token_ms(self) -> float | None: ...

    @property
    def total_ms(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RecentHistory:
    """The newest messages a model sees of a conversation, and where its next message goes."""

    messages: list[ChatMessage]
    next_position: int


@dataclass(frozen=True, slots=True)
class ReplyProgress:
    """What a reply still streaming has produced so far."""

    message_id: str
    content: str
    reasoning: str | None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    conversation_id: str
    position: int  # 0, 1, 2 … within the conversation
    role: Role
    content: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]] | None  # OpenAI shape: {id, type, function: {name, arguments}}
    tool_call_id: str | None
    model: str | None
    agent: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_token_ms: float | None
    total_ms: float | None
    finish_reason: str | None
    status: Status
    error: str | None
    created_at: datetime
    steps: list[dict[str, Any]] | None = None  # an agent's tool calls and results before this reply
    sources: list[dict[str, Any]] | None = None  # the passages the reply drew on (its `sources` event)

    def to_chat_message(self) -> ChatMessage:
        """The message as a model sees it (reasoning stays out: it is not sent back upstream)."""
        calls = [ToolCall.model_validate(call) for call in self.tool_calls] if self.tool_calls else None
        return ChatMessage(role=self.role, content=self.content, tool_calls=calls, tool_call_id=self.tool_call_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "position": self.position,
            "role": self.role,
            "content": self.content,
            "reasoning": self.reasoning,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "model": self.model,
            "agent": self.agent,
            "usage": _usage(self.prompt_tokens, self.completion_tokens),
            "time_to_first_token_ms": self.time_to_first_token_ms,
            "total_ms": self.total_ms,
            "finish_reason": self.finish_reason,
            "status": self.status,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "steps": self.steps,
            "sources": self.sources,
        }


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: str
    title: str | None
    model: str | None  # the model of its latest reply (or the one it was created with)
    agent: str | None
    message_count: int
    created_at: datetime
    updated_at: datetime  # last activity
    # Whose it is (`Principal.owner`); None: made by a caller who sees everything. Not in `to_dict`:
    # who may see a conversation is access's business, not part of what a client reads or exports.
    owner: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "agent": self.agent,
            "message_count": self.message_count,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ConversationRecord(ConversationSummary):
    messages: tuple[MessageRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**ConversationSummary.to_dict(self), "messages": [m.to_dict() for m in self.messages]}


@dataclass(frozen=True, slots=True)
class ConversationPage:
    items: list[ConversationSummary]
    next_cursor: str | None  # pass back as `cursor` for the next (older) page; None: no more


def _usage(prompt: int | None, completion: int | None) -> dict[str, int] | None:
    if prompt is None and completion is None:
        return None
    return {
        "prompt_tokens": prompt or 0,
        "completion_tokens": completion or 0,
        "total_tokens": (prompt or 0) + (completion or 0),
    }
