"""The agent run loop: model, then the tools it asked for, then the model again, until an answer.

One loop for every transport: it is the event stream of a Run, so `/v1`, `/api/chat`, the
WebSocket and the source systems' routes all see the same steps. Per step it streams the model's
events as they come (marking the calls of tools Parley runs as `server` calls), runs those tools
in parallel when the model has finished asking, reports each result as it arrives, and calls the
model again with the calls and results appended. A call of a tool the client declared ends the
reply with `tool_calls`, as without an agent. Closing the stream stops the model and the tools.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from parley.chat.agents import Agent
from parley.chat.steps import StepRecord
from parley.errors import ParleyError
from parley.events import (
    AgentHandoff,
    EventBatch,
    Finish,
    FinishReason,
    StepStart,
    StreamEvent,
    ToolCallDelta,
    ToolResult,
    Usage,
)
from parley.models.base import ChatMessage, ChatRequest, FunctionCall, ToolCall
from parley.models.registry import ModelEntry
from parley.tools.base import ToolOutcome, invoke

T = TypeVar("T")


class AgentTimeLimit(ParleyError):
    status_code = 504
    error_type = "server_error"
    code = "agent_time_limit"


@dataclass(slots=True)
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    server: bool | None = None  # None until its name is known
    held: list[ToolCallDelta] = field(default_factory=list)  # pieces that came before the name


class AgentLoop:
    def __init__(
        self,
        agent: Agent,
        request: ChatRequest,
        model_of: Callable[[Agent], ModelEntry],
        agent_named: Callable[[str], Agent],
        *,
        model_result_chars: int,
    ) -> None:
        self._agent = agent
        self._request = request
        self._model_of = model_of
        self._agent_named = agent_named
        self._model_result_chars = model_result_chars
        self._client_tools = {_tool_name(tool) for tool in request.tools or ()}
        self.record = StepRecord(agents=[agent.name])

    async def batches(self) -> AsyncGenerator[EventBatch, None]:
        agent, messages = self._agent, list(self._request.messages)
        usage = Usage(0, 0)
        deadline = time.monotonic() + agent.config.run_timeout_seconds
        for step in range(1, agent.config.max_steps + 1):
            if step > 1:
                yield [StepStart(step)]
            entry = self._model_of(agent)
            request = self._step_request(agent, messages)
            calls: dict[int, _Call] = {}
            finish: FinishReason = "stop"
            async for batch in _until(deadline, agent, _normalised_stream(entry, request)):
                out: list[StreamEvent] = []
                for event in batch:
                    if isinstance(event, ToolCallDelta):
                        out.extend(self._call_piece(calls, event, agent))
                    elif isinstance(event, Usage):
                        usage = Usage(
                            usage.prompt_tokens + event.prompt_tokens,
                            usage.completion_tokens + event.completion_tokens,
                        )
                    elif isinstance(event, Finish):
                        finish = event.reason
                    else:
                        out.append(event)
                if out:
                    yield out
            server_calls = [call for call in calls.values() if call.server]
            if not server_calls or finish == "length" or any(not call.server for call in calls.values()):
                # An answer, a reply cut short, or a call for the client to make: the reply ends.
                held = [piece for call in calls.values() if call.server is None for piece in call.held]
                yield [*held, usage, Finish("tool_calls" if calls and finish != "length" else finish)]
                return
            messages.append(_assistant_calls(server_calls))
            handoff: Agent | None = None
            async for call, outcome in _until(deadline, agent, self._run_tools(agent, server_calls)):
                yield [ToolResult(call.id, call.name, outcome.output, outcome.error, outcome.duration_ms)]
                messages.append(self._tool_message(call, outcome))
                target = agent.handoff_target(call.name)
                if target is not None and outcome.error is None and handoff is None:
                    handoff = self._agent_named(target)
            self.record.messages = messages[len(self._request.messages) :]
            if handoff is not None:
                yield [AgentHandoff(agent.name, handoff.name)]
                messages = handoff.with_prompt(messages, replacing=agent)
                agent = handoff
                self.record.agents.append(agent.name)
        yield [usage, Finish("max_steps")]

    def _step_request(self, agent: Agent, messages: list[ChatMessage]) -> ChatRequest:
        tools = [*(self._request.tools or ()), *(spec.to_openai() for spec in agent.tool_specs())]
        return replace(self._request, messages=messages, tools=tools or None)

    def _call_piece(self, calls: dict[int, _Call], piece: ToolCallDelta, agent: Agent) -> list[StreamEvent]:
        call = calls.setdefault(piece.index, _Call())
        call.id = call.id or piece.id or f"call_{id(call):x}_{piece.index}"
        call.name = call.name or piece.name or ""
        call.arguments.append(piece.arguments)
        if call.server is None:
            if not call.name:
                call.held.append(piece)  # (the name decides who runs it: wait for it)
                return []
            call.server = call.name not in self._client_tools and agent.runs(call.name)
            held, call.held = [*call.held, piece], []
            if not call.server:
                return list(held)
            first = ToolCallDelta(piece.index, call.id, call.name, "".join(p.arguments for p in held), server=True)
            return [first]
        if call.server:
            return [ToolCallDelta(piece.index, arguments=piece.arguments, server=True)]
        return [piece]

    async def _run_tools(self, agent: Agent, calls: list[_Call]) -> AsyncIterator[tuple[_Call, ToolOutcome]]:
        """Run the calls in parallel; each outcome as soon as it is known. Closing cancels the rest."""

        async def run(call: _Call) -> tuple[_Call, ToolOutcome]:
            tool = agent.tool(call.name)
            return call, await invoke(tool, "".join(call.arguments), agent.config.tool_timeout_seconds)

        tasks = [asyncio.ensure_future(run(call)) for call in calls]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _tool_message(self, call: _Call, outcome: ToolOutcome) -> ChatMessage:
        text = outcome.output
        limit = self._model_result_chars
        if len(text) > limit:
            text = f"{text[:limit]}\n[truncated: {limit} of {len(text)} characters]"
        return ChatMessage.model_construct(role="tool", content=text, tool_call_id=call.id, name=call.name)


def _assistant_calls(calls: list[_Call]) -> ChatMessage:
    tool_calls = [
        ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments="".join(call.arguments))) for call in calls
    ]
    return ChatMessage(role="assistant", tool_calls=tool_calls)


async def _normalised_stream(entry: ModelEntry, request: ChatRequest) -> AsyncIterator[EventBatch]:
    """One model call's batches, normalised (Harmony, the reasoning policy) as a Run would."""
    normalise = entry.normaliser(request)
    stream = entry.stream(request)
    try:
        async for batch in stream:
            normalised = batch if normalise is None else normalise(batch)
            if normalised:
                yield normalised
    finally:
        aclose = getattr(stream, "aclose", None)  # (closing stops the generation)
        if aclose is not None:
            await aclose()


async def _until(deadline: float, agent: Agent, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """The items, each awaited within what is left of the agent's time (never across a yield, where
    a timeout would fall on the consumer's code instead)."""
    try:
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    item = await anext(items)
            except StopAsyncIteration:
                return
            except TimeoutError:
                limit = agent.config.run_timeout_seconds
                raise AgentTimeLimit(f"the agent did not finish within its time limit of {limit:g} seconds") from None
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _tool_name(tool: object) -> str:
    if isinstance(tool, dict):
        function = tool.get("function")
        if isinstance(function, dict):
            return str(function.get("name", ""))
    return ""
