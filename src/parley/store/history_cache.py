"""The recent history of busy conversations, kept in process.

A turn reads its conversation's history before the model sees it. The history is kept here and
updated by this server's own writes: a turn opened adds its user message, a reply finished adds
the reply. Any write the cache can't place (a position it didn't expect, a reply it doesn't
know, the older write methods) drops the conversation, which is read again next time. A read
that a write raced is not kept.

Other servers sharing a PostgreSQL database write behind its back: their turns are caught by
position. Every history comes with the position the conversation's next message takes; a turn
whose own message lands elsewhere (another server added messages meanwhile) reads the history
again from the database before the model sees it, and the stale entry is dropped.

Each history keeps its conversation's owner, as stored: it is served only to a caller who may
see that conversation (one of that owner, or one who sees everything).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from parley.models.base import ChatMessage
from parley.store.records import RecentHistory

MAX_CONVERSATIONS = 1024
MAX_MESSAGES = 1024  # per conversation; older ones are let go, and reads that need them go to the database


@dataclass(slots=True)
class _History:
    next_position: int  # where the conversation's next message goes
    whole: bool  # holds every message from the conversation's start
    owner: str | None  # the conversation's, as stored
    positions: list[int] = field(default_factory=list)
    messages: list[ChatMessage] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # reply id -> its position, while it streams

    def add(self, position: int, message: ChatMessage) -> None:
        at = bisect.bisect(self.positions, position)
        self.positions.insert(at, position)
        self.messages.insert(at, message)
        if len(self.messages) > MAX_MESSAGES:
            del self.positions[0], self.messages[0]
            self.whole = False


class HistoryCache:
    def __init__(self) -> None:
        self._conversations: OrderedDict[str, _History] = OrderedDict()
        self._reads: dict[str, list[int]] = {}  # reads in flight: [readers, writes meanwhile]

    def get(self, conversation_id: str, limit: int | None, owner: str | None) -> RecentHistory | None:
        """The history kept, if it has what is asked and `owner` (None: anyone) may see it."""
        history = self._conversations.get(conversation_id)
        if history is None or not (history.whole or (limit is not None and limit <= len(history.messages))):
            return None
        if owner is not None and history.owner != owner:
            return None
        self._conversations.move_to_end(conversation_id)
        messages = history.messages if limit is None else history.messages[-limit:]
        return RecentHistory(list(messages), history.next_position)

    def reading(self, conversation_id: str) -> None:
        """A read of the conversation from the database begins."""
        self._reads.setdefault(conversation_id, [0, 0])[0] += 1

    def read(
        self,
        conversation_id: str,
        messages: list[ChatMessage],
        positions: list[int],
        next_position: int,
        whole: bool,
        owner: str | None,
    ) -> None:
        """A read ended with these messages: kept, unless a write to the conversation raced it."""
        if self._end_read(conversation_id) or conversation_id in self._conversations:
            return
        self._keep(conversation_id, _History(next_position, whole, owner, positions, messages))

    def read_failed(self, conversation_id: str) -> None:
        self._end_read(conversation_id)

    def opened(
        self, conversation_id: str, user_position: int, reply_id: str, message: ChatMessage, owner: str | None
    ) -> None:
        """A turn was opened: its user message at `user_position`, its reply streaming after it,
        in a conversation of `owner` (as stored)."""
        self._wrote(conversation_id)
        history = self._conversations.get(conversation_id)
        if history is None and user_position == 0:
            history = self._keep(conversation_id, _History(0, True, owner))
        if history is None:
            return
        if history.next_position != user_position:
            self.drop(conversation_id)
            return
        history.add(user_position, message)
        history.pending[reply_id] = user_position + 1
        history.next_position = user_position + 2

    def finished(self, conversation_id: str, reply_id: str, messages: list[ChatMessage]) -> None:
        """A reply was finished; `messages` are what the model will see of it (an agent's steps,
        then the reply; none for a failed or empty one), all at the reply's position."""
        self._wrote(conversation_id)
        history = self._conversations.get(conversation_id)
        if history is None:
            return
        position = history.pending.pop(reply_id, None)
        if position is None:
            self.drop(conversation_id)
        else:
            for message in messages:
                history.add(position, message)

    def drop(self, conversation_id: str) -> None:
        self._wrote(conversation_id)
        self._conversations.pop(conversation_id, None)

    def clear(self) -> None:
        for conversation_id in self._reads:
            self._reads[conversation_id][1] += 1
        self._conversations.clear()

    def _wrote(self, conversation_id: str) -> None:
        counts = self._reads.get(conversation_id)
        if counts is not None:
            counts[1] += 1

    def _end_read(self, conversation_id: str) -> bool:
        """Whether a write to the conversation came while it was being read."""
        counts = self._reads[conversation_id]
        counts[0] -= 1
        if counts[0] == 0:
            del self._reads[conversation_id]
        return counts[1] > 0

    def _keep(self, conversation_id: str, history: _History) -> _History:
        self._conversations[conversation_id] = history
        if len(self._conversations) > MAX_CONVERSATIONS:
            self._conversations.popitem(last=False)
        return history
