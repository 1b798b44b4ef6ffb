"""A conversation as a JSON document or as Markdown, for download or copy."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from parley.store.records import ConversationRecord, MessageRecord

EXPORT_FORMAT = "parley.conversation/1"
UNTITLED = "Untitled conversation"
_ROLE_HEADINGS = {
    "system": "System",
    "developer": "Developer",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool result",
}
_BACKTICKS = re.compile(r"`{3,}")


def to_json(conversation: ConversationRecord) -> dict[str, Any]:
    """Everything stored about the conversation, JSON-ready (times as ISO 8601 UTC)."""
    return {"format": EXPORT_FORMAT, **conversation.to_dict()}


def to_markdown(conversation: ConversationRecord) -> str:
    lines = [f"# {_one_line(conversation.title or UNTITLED)}", ""]
    lines.append(f"- Conversation: `{conversation.id}`")
    lines.append(f"- Started: {_when(conversation.created_at)}")
    lines.append(f"- Last activity: {_when(conversation.updated_at)}")
    if conversation.model:
        lines.append(f"- Model: {conversation.model}")
    if conversation.agent:
        lines.append(f"- Agent: {conversation.agent}")
    for message in conversation.messages:
        lines += ["", *_message(message)]
    return "\n".join(lines).rstrip() + "\n"


def _message(message: MessageRecord) -> list[str]:
    heading = _ROLE_HEADINGS[message.role]
    if message.role == "assistant" and (message.model or message.agent):
        heading += " · " + " · ".join(part for part in (message.agent, message.model) if part)
    if message.role == "tool" and message.tool_call_id:
        heading += f" (`{message.tool_call_id}`)"
    lines = [f"## {heading}", ""]
    if message.reasoning:
        lines += ["<details><summary>Reasoning</summary>", "", message.reasoning.strip(), "", "</details>", ""]
    for step in message.steps or []:  # an agent's tool calls and their results, before its answer
        for call in step.get("tool_calls") or []:
            lines += _tool_call(call)
        if step.get("role") == "tool":
            result = _fenced(str(step.get("content")), "")
            lines += [f"**Tool result** (`{step.get('tool_call_id', '')}`):", "", result, ""]
    if message.content:
        lines += [_fenced(message.content, "") if message.role == "tool" else message.content.strip(), ""]
    for call in message.tool_calls or []:
        lines += _tool_call(call)
    if message.sources:
        lines += ["**Sources:**", ""]
        lines += [_source_line(source) for source in message.sources]
        lines.append("")
    if message.status == "cancelled":
        lines += ["> *Stopped before the reply was complete.*", ""]
    elif message.status == "failed":
        lines += [f"> *The reply failed{': ' + _one_line(message.error) if message.error else '.'}*", ""]
    elif message.status == "streaming":
        lines += ["> *Still being written when exported.*", ""]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _tool_call(call: dict[str, Any]) -> list[str]:
    function = call.get("function", {})
    arguments = _fenced(_pretty_arguments(str(function.get("arguments", ""))), "json")
    return [f"**Tool call** `{function.get('name', '')}` (`{call.get('id', '')}`):", "", arguments, ""]


def _fenced(text: str, language: str) -> str:
    """A code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _pretty_arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _source_line(source: dict[str, Any]) -> str:
    page = f", page {source['page']}" if source.get("page") else ""
    where = f" <{source['uri']}>" if source.get("uri") else ""
    return f"{source.get('index')}. {_one_line(str(source.get('title') or source.get('document_id')))}{page}{where}"
