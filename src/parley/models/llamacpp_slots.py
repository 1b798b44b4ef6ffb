"""Which llama.cpp sequence a request runs in, and how much of its prompt is already there.

Each slot is one llama.cpp sequence id whose KV state stays in the context after its reply
ends, with the exact tokens that state holds. A new request takes an idle slot and keeps the
longest common prefix of that slot's tokens and its own prompt: the KV of a token depends
only on the tokens before it, so a prefix equal token for token is exactly what evaluating it
again would produce. Everything after the first differing token is dropped (an edited
message, turns dropped by context fitting, another system prompt), never reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field


def common_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens the two sequences share."""
    for index, (a, b) in enumerate(zip(cached, prompt, strict=False)):
        if a != b:
            return index
    return min(len(cached), len(prompt))


@dataclass(slots=True)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # exactly what its KV state holds, in order
    busy: bool = False
    last_used: int = -1  # a tick of the table's clock; -1: never used


@dataclass(frozen=True, slots=True)
class Claim:
    slot: Slot
    reused: int  # prompt tokens whose KV state the slot already holds


class SlotTable:
    """The sequences of one llama.cpp context. Used by the engine's thread only."""

    def __init__(self, count: int) -> None:
        self.slots = [Slot(seq_id) for seq_id in range(count)]
        self._clock = itertools.count()

    def idle(self) -> int:
        return sum(not slot.busy for slot in self.slots)

    def claim(self, prompt: Sequence[int], *, reuse: bool = True) -> Claim:
        """Take the idle slot that holds most of `prompt`, else the least recently used one.

        A slot counts as holding the prompt when the shared prefix is at least half of what
        it caches (the conversation's next turn, a retry): taking it for a mere shared system
        prompt would throw away another conversation's longer state. At least the prompt's
        last token is always left to evaluate, since its logits pick the first reply token.
        """
        idle = [slot for slot in self.slots if not slot.busy]
        if not idle:
            raise RuntimeError("no idle slot: the engine admits at most as many requests as it has slots")
        limit = max(len(prompt) - 1, 0)
        shared = {slot.seq_id: min(common_prefix(slot.tokens, prompt), limit) if reuse else 0 for slot in idle}
        continuing = [slot for slot in idle if shared[slot.seq_id] > 0 and 2 * shared[slot.seq_id] >= len(slot.tokens)]
        if continuing:
            chosen = max(continuing, key=lambda slot: (shared[slot.seq_id], -slot.last_used))
        else:
            chosen = min(idle, key=lambda slot: slot.last_used)
        chosen.busy = True
        chosen.last_used = next(self._clock)
        return Claim(chosen, shared[chosen.seq_id])

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = next(self._clock)
