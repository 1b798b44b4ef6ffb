"""Fitting a conversation into the model's context window.

Keeps the system prompt and the newest turns, leaves room for the reply, and says how many
messages it left out, so the client can tell the user instead of truncating in silence.

Tokens are counted by the model itself (`Model.count_tokens`): exactly, with the GGUF's chat
template and tokenizer, for llama.cpp models; by a documented estimate for remote ones. Every
history returned was counted whole and fits: the search never trusts a guess or a sum of
per-message counts, since a chat template's markup is not a sum of its messages.

Cost: the search starts from the newest turn and guesses where the budget runs out from the
size of the turns, so it counts a handful of candidate histories, each about the size of
what it keeps, however long the stored conversation is: `bench/context.py` measures it (3-4
counts, a few ms, for a 1,000-message conversation and a 512-token context).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from parley.errors import InvalidRequest
from parley.models.base import ChatMessage, Model

# Reply room when a request sets no max_tokens: a quarter of the context, within these bounds.
DEFAULT_RESERVE_MIN = 32
DEFAULT_RESERVE_MAX = 1024


# Fewer tokens than any message takes in a prompt: its role and the chat template's markup around
# it (SmolLM2's ChatML takes 5 for "hi", gpt-oss's Harmony 5, the remote estimate 4 + its text).
MIN_MESSAGE_TOKENS = 4


def history_window(context_size: int | None) -> int | None:
    """How many of a conversation's newest messages fitting could ever keep (None: no limit)."""
    return None if context_size is None else context_size // MIN_MESSAGE_TOKENS + 1


@dataclass(frozen=True, slots=True)
class FittedHistory:
    messages: list[ChatMessage]
    dropped: int  # earlier messages left out (never a system prompt, never the newest user message)
    prompt_tokens: int | None  # as the model counts them; None when its context size is unknown


def reply_reserve(context_size: int, max_tokens: int | None) -> int:
    """Room kept for the reply: what the request asks for, else a quarter of the context (32 to
    1024 tokens); never more than half the context, so a large max_tokens can't starve the prompt.

    A reply asked for more than that may be cut short by the context ("length"), as it would
    anywhere: the llama.cpp provider gives a reply whatever room the prompt leaves.
    """
    half = max(1, context_size // 2)
    if max_tokens is None:
        wanted = max(DEFAULT_RESERVE_MIN, min(DEFAULT_RESERVE_MAX, context_size // 4))
    else:
        wanted = max(1, max_tokens)
    return min(wanted, half)


def _starts(turns: Sequence[ChatMessage]) -> list[int]:
    """Where a kept history may begin: the whole conversation, or a user turn, so an answer or a
    tool result is never kept without its question (strict chat templates refuse that, too)."""
    users = [index for index, message in enumerate(turns) if message.role == "user"]
    return [0, *users] if not users or users[0] != 0 else users


async def fit_to_context(model: Model, messages: list[ChatMessage], max_tokens: int | None) -> FittedHistory:
    """The newest part of `messages` that fits the model's context with room for the reply.

    Leading system (developer) messages are always kept; of the rest, the longest run that ends
    with the conversation and starts at a user turn. When earlier turns must go, old tool results
    (before the newest user message) are shortened first, each saying so, if that keeps more of
    the conversation. Raises InvalidRequest (`context_length_exceeded`) when even the system prompt
    and the newest user turn don't fit.
    """
    fitted = await _fit(model, messages, max_tokens)
    if fitted.dropped:
        shortened = shorten_old_tool_results(messages)
        if shortened is not messages:
            again = await _fit(model, shortened, max_tokens)
            if again.dropped < fitted.dropped:
                return again
    return fitted


KEPT_TOOL_RESULT_CHARS = 200  # of an old tool result that had to be shortened


def shorten_old_tool_results(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The messages with each long tool result before the newest user message cut to its start
    (`messages` itself when there is none)."""
    newest_user = max((i for i, message in enumerate(messages) if message.role == "user"), default=-1)
    shortened = list(messages)
    changed = False
    for index in range(newest_user):
        message = messages[index]
        text = message.text()
        if message.role == "tool" and len(text) > 2 * KEPT_TOOL_RESULT_CHARS:
            note = f"{text[:KEPT_TOOL_RESULT_CHARS]}\n[shortened to fit the context: {len(text)} characters in all]"
            shortened[index] = message.model_copy(update={"content": note})
            changed = True
    return shortened if changed else messages


async def _fit(model: Model, messages: list[ChatMessage], max_tokens: int | None) -> FittedHistory:
    context = model.context_size
    if context is None:
        return FittedHistory(list(messages), 0, None)
    reserve = reply_reserve(context, max_tokens)
    budget = context - reserve
    lead = 0
    while lead < len(messages) and messages[lead].role in ("system", "developer"):
        lead += 1
    system, turns = messages[:lead], messages[lead:]
    starts = _starts(turns)
    counted: dict[int, int] = {}

    async def cost(candidate: int) -> int:
        """Prompt tokens when the history starts at starts[candidate]."""
        if candidate not in counted:
            counted[candidate] = await model.count_tokens(system + turns[starts[candidate] :])
        return counted[candidate]

    newest = len(starts) - 1
    if await cost(newest) > budget:
        raise await _too_long(model, system, counted[newest], budget, context, reserve)
    # UTF-8 bytes (plus some for each message's markup) are a cheap guide to where the budget
    # runs out, steadier across scripts than characters; each guess is then counted for real,
    # so a poor guide costs time, never a fit.
    weights = _suffix_weights(turns, starts)
    system_weight = _weight(system)
    fits, too_long = newest, -1  # the shortest start known to fit; the longest known not to (-1: none)
    stalls = 0  # guesses in a row that did little: two hand a step to doubling or bisection
    while fits - too_long > 1:
        if stalls < 2:
            guess = _guess(weights, counted, fits, too_long, budget, system_weight)
        elif too_long < 0:
            guess = fits - (newest - fits + 1)  # keep twice as many turns
        else:
            guess = (fits + too_long) // 2
        guess = min(max(guess, too_long + 1), fits - 1)
        kept, span = newest - fits + 1, fits - too_long
        if await cost(guess) <= budget:
            fits = guess
        else:
            too_long = guess
        # Progress: twice the turns kept while nothing was too long yet, else half the span left.
        progressed = newest - fits + 1 >= 2 * kept if too_long < 0 else (fits - too_long) * 2 <= span
        stalls = 0 if progressed or stalls >= 2 else stalls + 1
    start = starts[fits]
    return FittedHistory(system + turns[start:], start, counted[fits])


_MARKUP_WEIGHT = 16  # bytes, for the few tokens of markup a chat template puts around each message


def _weight(messages: Sequence[ChatMessage]) -> int:
    return sum(len(message.text().encode()) + _MARKUP_WEIGHT for message in messages)


def _suffix_weights(turns: Sequence[ChatMessage], starts: Sequence[int]) -> list[int]:
    """For each possible start, the weight of the turns from there to the end (decreasing)."""
    after = [0] * (len(turns) + 1)
    for index in range(len(turns) - 1, -1, -1):
        after[index] = after[index + 1] + _weight(turns[index : index + 1])
    return [after[start] for start in starts]


def _guess(
    weights: list[int], counted: dict[int, int], fits: int, too_long: int, budget: int, system_weight: int
) -> int:
    """The earliest start whose tokens, interpolated from the counts so far, stay in budget."""
    if too_long >= 0 and weights[too_long] > weights[fits]:
        rate = (counted[too_long] - counted[fits]) / (weights[too_long] - weights[fits])
    else:
        rate = counted[fits] / (weights[fits] + system_weight)
    if rate <= 0:
        return too_long + 1
    allowed = weights[fits] + (budget - counted[fits]) / rate
    # weights decrease along the starts: find the first one at or under the allowed weight.
    return bisect.bisect_left(weights, -allowed, key=lambda weight: -weight)


async def _too_long(
    model: Model, system: list[ChatMessage], tokens: int, budget: int, context: int, reserve: int
) -> InvalidRequest:
    room = f"model {model.name!r} has {budget} for a prompt (a context of {context}, less {reserve} kept for the reply)"
    if system:
        alone = await model.count_tokens(system)
        if alone > budget:
            return InvalidRequest(
                f"the system prompt alone needs {alone} tokens; {room}",
                param="messages",
                code="context_length_exceeded",
            )
        return InvalidRequest(
            f"the newest message needs {tokens} tokens with the system prompt; {room}",
            param="message",
            code="context_length_exceeded",
        )
    return InvalidRequest(
        f"the newest message needs {tokens} tokens; {room}", param="message", code="context_length_exceeded"
    )
