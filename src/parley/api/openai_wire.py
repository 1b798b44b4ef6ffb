"""The OpenAI chat completions wire format: request body, reply, and stream chunks."""

from __future__ import annotations

from dataclasses import asdict
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from parley.access.edge import END_USER_PATTERN, MAX_END_USER_CHARS
from parley.api.input_limits import MAX_STOP_SEQUENCES, Flag, Integer, MaxTokens, Name, Seed, Temperature, TopP
from parley.chat.run import Run
from parley.errors import ParleyError
from parley.events import (
    AgentHandoff,
    EventBatch,
    Finish,
    ReasoningDelta,
    Sources,
    StepStart,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolResult,
    Usage,
)
from parley.models.base import ChatMessage, ChatRequest, GenerationParams


class StreamOptions(BaseModel):
    include_usage: Flag = False


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionSpec


class ChatCompletionBody(BaseModel):
    """What `/v1/chat/completions` accepts. Unknown fields are ignored, as OpenAI clients expect.

    Types are strict (`true` is not a number, `"no"` not a boolean) and integers bounded (see
    `parley.api.input_limits`); the official clients send nothing these refuse.
    """

    model_config = ConfigDict(extra="ignore")

    model: Name
    messages: list[ChatMessage] = Field(min_length=1)
    stream: Flag = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: Integer = Field(default=1, ge=1, le=1, description="Only one choice is generated.")
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Parley's extension (the official clients send it with `extra_body`): an agent's steps (tool
    # calls Parley runs, their results, handoffs) as `parley` objects on otherwise empty chunks.
    parley_steps: Flag = False
    # Parley's extension: knowledge collections (ids) whose passages the reply cites as [1], [2];
    # the passages come first, as a `parley` object of type `sources` (see `ChunkEncoder`).
    parley_collections: list[Name] = Field(default=[], max_length=16)
    # The end user an application serves (OpenAI's field): owns what is stored for them, unless
    # the request names one in `X-Parley-User` already.
    user: str | None = Field(default=None, max_length=MAX_END_USER_CHARS, pattern=END_USER_PATTERN)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, not {len(stop)}")
        return stop

    def to_request(self) -> ChatRequest:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return ChatRequest(
            messages=self.messages,
            params=GenerationParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_completion_tokens or self.max_tokens,
                stop=stop,
                seed=self.seed,
            ),
            tools=[tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            tool_choice=self.tool_choice,
            response_format=self.response_format,
        )


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def _finish_reason(run: Run) -> str:
    reason = run.finish_reason or "stop"
    return reason if reason in ("stop", "length", "tool_calls", "content_filter", "max_steps") else "stop"


def completion(run: Run) -> dict[str, Any]:
    """The whole reply of a non-streamed request."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": run.text if run.text or not run.tool_calls else None,
    }
    if run.reasoning is not None:
        message["reasoning_content"] = run.reasoning
    if run.tool_calls:
        message["tool_calls"] = [call.model_dump() for call in run.tool_calls]
    reply = {
        "id": f"chatcmpl-{run.id[4:]}",
        "object": "chat.completion",
        "created": run.created,
        "model": run.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(run)}],
        "usage": _usage(run.usage),
    }
    if run.sources is not None:  # Parley's extension: what the reply cites
        reply["parley"] = {"sources": _sources(run.sources)}
    return reply


def _sources(sources: Sources) -> dict[str, Any]:
    return {"passages": [asdict(p) for p in sources.passages], "pending": [asdict(p) for p in sources.pending]}


class ChunkEncoder:
    """Encodes run events as `chat.completion.chunk` SSE messages.

    The JSON is assembled from a prefix computed once per stream: this is the hot path of
    every token, and re-serialising the constant part of each chunk dominated its cost.
    """

    def __init__(self, run: Run, include_usage: bool, steps: bool = False) -> None:
        self._run = run
        self._include_usage = include_usage
        self._steps = steps  # an agent's steps shown (`parley_steps`), else left out
        head = {"id": f"chatcmpl-{run.id[4:]}", "object": "chat.completion.chunk", "created": run.created}
        self._prefix = (
            orjson.dumps(head)[:-1]
            + b',"model":'
            + orjson.dumps(run.model)
            + b',"system_fingerprint":null,"choices":[{"index":0,"delta":'
        )
        self._open_suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._text_head = b"data: " + self._prefix + b'{"content":'
        self._text_tail = b"}" + self._open_suffix
        self._usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        suffix = (
            self._open_suffix if finish is None else f',"logprobs":null,"finish_reason":"{finish}"}}]}}\n\n'.encode()
        )
        return b"data: " + self._prefix + orjson.dumps(delta) + suffix

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, batch: EventBatch) -> bytes:
        """The chunks of a batch of events, as one write."""
        parts: list[bytes] = []
        for event in batch:
            if isinstance(event, TextDelta):  # the token path: no dict, no json.dumps
                parts.append(self._text_head + encode_basestring_ascii(event.text).encode() + self._text_tail)
            elif isinstance(event, ReasoningDelta):
                parts.append(self._chunk({"reasoning_content": event.text}))
            elif isinstance(event, ToolCallDelta) and not event.server:
                call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
                if event.id is not None:
                    call["id"], call["type"] = event.id, "function"
                if event.name is not None:
                    call["function"]["name"] = event.name
                parts.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(event, Usage):
                self._usage = event
            elif isinstance(event, Finish):
                parts.append(self._chunk({}, _finish_reason(self._run)))
            elif isinstance(event, Sources):  # first, before any token: shown whether or not steps are
                parts.append(self._step_chunk({"type": "sources", **_sources(event)}))
            elif self._steps:
                step = _step(event)
                if step is not None:
                    parts.append(
                        b"data: "
                        + self._prefix
                        + b'{},"logprobs":null,"finish_reason":null}],"parley":'
                        + orjson.dumps(step)
                        + b"}\n\n"
                    )
        return b"".join(parts)

    def _step_chunk(self, step: dict[str, Any]) -> bytes:
        open_choice = b'{},"logprobs":null,"finish_reason":null}]'
        return b"data: " + self._prefix + open_choice + b',"parley":' + orjson.dumps(step) + b"}\n\n"

    def closing(self) -> bytes:
        done = b"data: [DONE]\n\n"
        if not self._include_usage:
            return done
        usage_chunk = {
            "id": f"chatcmpl-{self._run.id[4:]}",
            "object": "chat.completion.chunk",
            "created": self._run.created,
            "model": self._run.model,
            "choices": [],
            "usage": _usage(self._usage),
        }
        return b"data: " + orjson.dumps(usage_chunk) + b"\n\n" + done

    def error(self, error: ParleyError) -> bytes:
        return b"data: " + orjson.dumps(error.to_body()) + b"\n\n"


def _step(event: StreamEvent) -> dict[str, Any] | None:
    """An agent's step as `/v1` shows it with `parley_steps` (the `parley` field of a chunk)."""
    if isinstance(event, ToolCallDelta):
        return {
            "type": "tool_call_delta",
            "index": event.index,
            "id": event.id,
            "name": event.name,
            "arguments": event.arguments,
        }
    if isinstance(event, ToolResult):
        return {
            "type": "tool_result",
            "id": event.id,
            "name": event.name,
            "output": event.output,
            "error": event.error,
            "duration_ms": round(event.duration_ms, 1),
        }
    if isinstance(event, AgentHandoff):
        return {"type": "agent_handoff", "from_agent": event.from_agent, "to_agent": event.to_agent}
    if isinstance(event, StepStart):
        return {"type": "step", "step": event.step}
    return None
