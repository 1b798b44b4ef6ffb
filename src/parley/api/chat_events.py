"""One conversation turn's events as (name, payload) pairs.

`/api/chat` sends them as named SSE events, the WebSocket as JSON frames: the same events,
encoded once here, in two thin wire formats.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from parley.api.chat_schema import (
    AgentHandoffOut,
    ErrorOut,
    MessageComplete,
    MessageStart,
    ReasoningDeltaOut,
    SourcesOut,
    StepOut,
    TextDeltaOut,
    ToolCallDeltaOut,
    ToolResultOut,
    UsageOut,
    timing_out,
    tool_calls_out,
)
from parley.chat.turns import Turn
from parley.errors import ParleyError
from parley.events import (
    AgentHandoff,
    ReasoningDelta,
    Sources,
    StepStart,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolResult,
)
from parley.tools.config import ToolSettings

NamedEvent = tuple[str, BaseModel]
DEFAULT_RESULT_CHARS = ToolSettings().client_result_chars


class ChatEvents:
    def __init__(self, turn: Turn, result_chars: int = DEFAULT_RESULT_CHARS) -> None:
        self._turn = turn
        self._result_chars = result_chars  # a tool result's length in its `tool_result` event

    def start(self) -> MessageStart:
        turn = self._turn
        return MessageStart(
            run_id=turn.run.id,
            message_id=turn.message_id,
            conversation_id=turn.conversation_id,
            model=turn.run.model,
            agent=turn.agent,
            created=turn.run.created,
            truncated=turn.truncated_messages > 0,
            truncated_messages=turn.truncated_messages,
        )

    def opening(self) -> Iterator[NamedEvent]:
        yield "message_start", self.start()

    def encode(self, event: StreamEvent) -> Iterator[NamedEvent]:
        if isinstance(event, TextDelta):
            yield "text_delta", TextDeltaOut(text=event.text)
        elif isinstance(event, ReasoningDelta):
            yield "reasoning_delta", ReasoningDeltaOut(text=event.text)
        elif isinstance(event, ToolCallDelta) and event.server:
            yield (
                "tool_call_delta",
                ToolCallDeltaOut(index=event.index, id=event.id, name=event.name, arguments=event.arguments),
            )
        elif isinstance(event, ToolResult):
            yield (
                "tool_result",
                ToolResultOut(
                    id=event.id,
                    name=event.name,
                    output=event.output[: self._result_chars],
                    output_chars=len(event.output),
                    error=event.error,
                    duration_ms=round(event.duration_ms, 1),
                ),
            )
        elif isinstance(event, AgentHandoff):
            yield "agent_handoff", AgentHandoffOut(from_agent=event.from_agent, to_agent=event.to_agent)
        elif isinstance(event, StepStart):
            yield "step", StepOut(step=event.step)
        elif isinstance(event, Sources):
            yield "sources", SourcesOut.of(event)

    def closing(self) -> Iterator[NamedEvent]:
        run = self._turn.run
        for call in tool_calls_out(run.tool_calls):
            yield "tool_call", call
        yield (
            "message_complete",
            MessageComplete(
                message_id=self._turn.message_id,
                finish_reason=run.ended_because,
                usage=UsageOut.of(run.usage),
                timing=timing_out(run),
            ),
        )

    @staticmethod
    def error(error: ParleyError) -> NamedEvent:
        return "error", ErrorOut(message=error.message, type=error.error_type, code=error.code)
