"""The bodies and events of `/api/chat`, Parley's own API for front ends."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parley.api.input_limits import ConversationId, Flag, MaxTokens, Name, Temperature
from parley.chat.run import Run
from parley.events import Sources, Usage
from parley.models.base import ToolCall

MAX_COLLECTIONS = 16
Collections = Annotated[list[Name], Field(max_length=MAX_COLLECTIONS)]


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, description="The user's message.")
    conversation_id: ConversationId | None = Field(
        default=None, description="Continue this conversation, or start one under this id."
    )
    model: Name | None = Field(default=None, description="A model name from `/v1/models`; default: the first.")
    agent: Name | None = Field(default=None, description="A configured agent, with its own system prompt.")
    stream: Flag = Field(default=True, description="Stream SSE events (true) or reply once with JSON.")
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    collections: Collections = Field(
        default=[],
        description="Knowledge collections (ids) to retrieve from: the reply cites their passages as [1], [2] "
        "(with the agent's own collections, if it has any).",
    )
    on_disconnect: Literal["continue", "cancel"] | None = Field(
        default=None,
        description=(
            "A streamed reply whose client leaves: keeps generating, resumable at `/api/runs/{run_id}/events` "
            "(`continue`), or is cancelled (`cancel`). Default: the server's `on_disconnect`."
        ),
    )


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage | None) -> UsageOut | None:
        if usage is None:
            return None
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class TimingOut(BaseModel):
    time_to_first_token_ms: float | None
    total_ms: float
    tokens_per_second: float | None


class MessageStart(BaseModel):
    """`event: message_start` — first on every stream."""

    run_id: str
    message_id: str
    conversation_id: str
    model: str
    agent: str | None
    created: int
    truncated: bool = Field(description="Earlier messages were left out to fit the model's context.")
    truncated_messages: int = Field(description="How many earlier messages were left out.")


class TextDeltaOut(BaseModel):
    """`event: text_delta` — the next piece of the answer."""

    text: str


class ReasoningDeltaOut(BaseModel):
    """`event: reasoning_delta` — the next piece of the model's reasoning, for models that reason."""

    text: str


class ToolCallOut(BaseModel):
    """`event: tool_call` — one whole tool call the model asked for, sent once it is complete."""

    id: str
    name: str
    arguments: str


class ToolCallDeltaOut(BaseModel):
    """`event: tool_call_delta` — a piece of a call of a tool Parley runs (an agent's), as it arrives:
    the first piece of a call has its `id` and `name`, the others more of its `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str


class ToolResultOut(BaseModel):
    """`event: tool_result` — what a tool Parley ran answered, or why it failed."""

    id: str = Field(description="The id of the call it answers.")
    name: str
    output: str = Field(description="The result, cut to the server's `tools.client_result_chars`.")
    output_chars: int = Field(description="The whole result's length (the model got it up to its own limit).")
    error: str | None = Field(description="Why the tool failed (the model was told, and may recover).")
    duration_ms: float


class AgentHandoffOut(BaseModel):
    """`event: agent_handoff` — the reply goes on under another agent."""

    from_agent: str
    to_agent: str


class StepOut(BaseModel):
    """`event: step` — the agent calls its model again, with its tools' results (steps count from 1)."""

    step: int


class MessageComplete(BaseModel):
    """`event: message_complete` — last on a stream that succeeded or was cut by a limit."""

    message_id: str
    finish_reason: str
    usage: UsageOut | None
    timing: TimingOut


class ErrorOut(BaseModel):
    """`event: error` — last on a stream that failed after it started."""

    message: str
    type: str
    code: str | None


class SourcePassageOut(BaseModel):
    index: int = Field(description="As the reply cites it: [1], [2] …")
    document_id: str
    title: str
    uri: str | None
    page: int | None = Field(description="From 1, for paged documents (PDF).")
    chunk_id: str
    text: str
    score: float


class PendingSourceOut(BaseModel):
    document_id: str
    title: str
    state: str = Field(description="`queued` or `indexing`: not searched for this reply.")
    progress: float | None


class SourcesOut(BaseModel):
    """`event: sources` — the passages the reply draws on, before its first token (turns with collections)."""

    passages: list[SourcePassageOut]
    pending: list[PendingSourceOut] = Field(description="Documents of the collections still being indexed.")

    @classmethod
    def of(cls, sources: Sources) -> SourcesOut:
        return cls.model_validate(
            {"passages": [asdict(p) for p in sources.passages], "pending": [asdict(p) for p in sources.pending]}
        )


class ChatReply(BaseModel):
    """The JSON reply when `stream` is false: `message_start`'s fields, then the reply's."""

    run_id: str
    message_id: str
    conversation_id: str
    model: str
    agent: str | None
    created: int
    truncated: bool
    truncated_messages: int
    content: str
    reasoning: str | None
    tool_calls: list[ToolCallOut]
    finish_reason: str
    usage: UsageOut | None
    timing: TimingOut
    sources: SourcesOut | None = Field(default=None, description="With `collections`: what the reply cites.")


STREAM_EVENT_MODELS: tuple[type[BaseModel], ...] = (
    MessageStart,
    SourcesOut,
    TextDeltaOut,
    ReasoningDeltaOut,
    ToolCallOut,
    ToolCallDeltaOut,
    ToolResultOut,
    AgentHandoffOut,
    StepOut,
    MessageComplete,
    ErrorOut,
)


def stream_event_schemas() -> dict[str, Any]:
    """JSON schemas of the SSE event payloads, for the OpenAPI document's components."""
    schemas: dict[str, Any] = {}
    for model in STREAM_EVENT_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in calls]


def timing_out(run: Run) -> TimingOut:
    timing = run.timing()
    return TimingOut(
        time_to_first_token_ms=timing.time_to_first_token_ms,
        total_ms=timing.total_ms,
        tokens_per_second=timing.tokens_per_second,
    )
