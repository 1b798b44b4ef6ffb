"""Scripted agent upstreams: answers that depend on the conversation so far, as a model's would.

The upstream (tests/support/upstream.py) plays these for a model named `agent-<plan>`. Each plan
looks at the messages it was sent (tool results so far, the system prompt) and either asks for
tools (streamed as OpenAI does: id and name first, then argument pieces) or answers in text.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

TRIAGE_PROMPT = "You are the triage agent."
BILLING_PROMPT = "You are the billing agent."


class Answer(Protocol):
    async def delta(self, delta: dict[str, Any], finish: str | None = None) -> None: ...
    async def end(self, completion_tokens: int) -> None: ...


Call = tuple[str, str]  # (tool name, arguments as the model writes them)


async def _calls(answer: Answer, calls: list[Call], finish: str = "tool_calls") -> None:
    await answer.delta({"role": "assistant", "content": None})
    for index, (name, arguments) in enumerate(calls):
        function = {"name": name, "arguments": ""}
        opening = {"index": index, "id": f"call_{name}_{index}", "type": "function", "function": function}
        await answer.delta({"tool_calls": [opening]})
        middle = len(arguments) // 2  # the arguments in two pieces, as models stream them
        for piece in (arguments[:middle], arguments[middle:]):
            await answer.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    await answer.delta({}, finish)
    await answer.end(7)


async def _text(answer: Answer, text: str) -> None:
    await answer.delta({"role": "assistant", "content": ""})
    for word in text.split(" "):
        await answer.delta({"content": word + " "})
    await answer.delta({}, "stop")
    await answer.end(len(text.split(" ")))


def _results(body: dict[str, Any]) -> list[str]:
    """The tool results of this turn (those after the newest user message)."""
    messages = body.get("messages", [])
    newest_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return [str(m.get("content")) for m in messages[newest_user + 1 :] if m.get("role") == "tool"]


def _system(body: dict[str, Any]) -> str:
    messages = body.get("messages", [])
    return str(messages[0].get("content")) if messages and messages[0].get("role") == "system" else ""


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools") or []]


async def _calc(answer: Answer, body: dict[str, Any]) -> None:
    results = _results(body)
    if not results:
        await _calls(answer, [("calculator", json.dumps({"expression": "6 * 7"}))])
    else:
        await _text(answer, f"The answer is {results[-1]}")


async def _parallel(answer: Answer, body: dict[str, Any]) -> None:
    results = _results(body)
    if not results:
        calls = [("calculator", '{"expression": "2 + 2"}'), ("current_time", '{"timezone": "UTC"}')]
        await _calls(answer, calls)
    else:
        await _text(answer, "Results: " + " | ".join(results))


async def _handoff(answer: Answer, body: dict[str, Any]) -> None:
    if _system(body) == BILLING_PROMPT:
        await _text(answer, "Billing here: your invoice is paid.")
    elif not _results(body):
        await _calls(answer, [("transfer_to_billing", "{}")])
    else:
        await _text(answer, "triage should not answer after a handoff")


async def _recover(answer: Answer, body: dict[str, Any]) -> None:
    """Calls the first tool it is offered whose name ends with `target`, then reports what came back."""
    results = _results(body)
    if not results:
        target = [m for m in body.get("messages", []) if m.get("role") == "user"][-1].get("content", "")
        name = next(name for name in _tool_names(body) if name.endswith(str(target).split(" ")[0]))
        arguments = str(target).split(" ", 1)[1] if " " in str(target) else "{}"
        await _calls(answer, [(name, arguments)])
    else:
        await _text(answer, f"Recovered after: {results[-1]}")


async def _forever(answer: Answer, body: dict[str, Any]) -> None:
    await _calls(answer, [("calculator", '{"expression": "1 + 1"}')])


async def _client(answer: Answer, body: dict[str, Any]) -> None:
    await _calls(answer, [("get_weather", '{"city": "Paris"}')])


async def _cut(answer: Answer, body: dict[str, Any]) -> None:
    await _calls(answer, [("calculator", '{"expression": "12')], finish="length")


async def _echo(answer: Answer, body: dict[str, Any]) -> None:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    await _text(answer, f"You said: {users[-1]['content']}")


async def _search(answer: Answer, body: dict[str, Any]) -> None:
    """Searches once a turn when it is offered `search_knowledge` (after a handoff too), then cites."""
    messages = body.get("messages", [])
    newest_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    searched = any("search_knowledge" in str(m.get("tool_call_id")) for m in messages[newest_user + 1 :])
    if not searched and "search_knowledge" in _tool_names(body):
        await _calls(answer, [("search_knowledge", json.dumps({"query": messages[newest_user]["content"]}))])
    else:
        await _text(answer, f"Per the passages: {_results(body)[-1].splitlines()[0]}")


async def _desk(answer: Answer, body: dict[str, Any]) -> None:
    if not _results(body):
        await _calls(answer, [("transfer_to_librarian", "{}")])
    else:
        await _text(answer, "the desk should not answer after a handoff")


PLANS: dict[str, Callable[[Answer, dict[str, Any]], Awaitable[None]]] = {
    "agent-calc": _calc,
    "agent-parallel": _parallel,
    "agent-handoff": _handoff,
    "agent-recover": _recover,
    "agent-forever": _forever,
    "agent-client": _client,
    "agent-cut": _cut,
    "agent-echo": _echo,
    "agent-search": _search,
    "agent-desk": _desk,
}
