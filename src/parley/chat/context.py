"""Fitting a conversation into the model's context window.

Keeps the system prompt and the newest turns, leaves room for the reply, and says how many
messages it left out, so the client can tell the user instead of truncating in silence.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.errors import InvalidRequest
from parley.models.base import ChatMessage, Model


@dataclass(frozen=True, slots=True)
class FittedHistory:
    messages: list[ChatMessage]
    dropped: int
    prompt_tokens: int | None  # None when the model's context size is unknown


def reply_reserve(context_size: int, max_tokens: int | None) -> int:
    """Room kept for the reply: what the request asks for, else a quarter of the context."""
    if max_tokens is not None:
        return min(max_tokens, context_size // 2)
    return max(32, min(1024, context_size // 4))


async def fit_to_context(model: Model, messages: list[ChatMessage], max_tokens: int | None) -> FittedHistory:
    context = model.context_size
    if context is None:
        return FittedHistory(messages, 0, None)
    budget = context - reply_reserve(context, max_tokens)
    lead = 0
    while lead < len(messages) and messages[lead].role in ("system", "developer"):
        lead += 1
    system, turns = messages[:lead], messages[lead:]

    async def cost(start: int) -> int:
        return await model.count_tokens(system + turns[start:])

    total = await cost(0)
    if total <= budget:
        return FittedHistory(messages, 0, total)
    # Binary search for the first turn to keep: the earliest start whose suffix fits.
    low, high = 1, len(turns) - 1
    best: tuple[int, int] | None = None
    while low <= high:
        middle = (low + high) // 2
        tokens = await cost(middle)
        if tokens <= budget:
            best, high = (middle, tokens), middle - 1
        else:
            low = middle + 1
    if best is None:
        raise InvalidRequest(
            f"the newest message alone needs more than the {budget} tokens that model {model.name!r} "
            f"has for a prompt (context {context}, minus room for the reply)",
            param="message",
            code="context_length_exceeded",
        )
    start, tokens = best
    # A kept history starts at a user turn: never with a reply or a tool result cut from its question.
    while start < len(turns) - 1 and turns[start].role != "user":
        start += 1
        tokens = await cost(start)
    return FittedHistory(system + turns[start:], start, tokens)
