"""Run logs in this process's memory: the whole log of a single instance, and the fast local
copy of a Redis-backed one (a reader on the run's own instance never goes to Redis)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from parley.runs.records import LoggedEvent, RunRecord, RunReference, RunState

NamedBytes = tuple[bytes, bytes]  # an event's name and JSON payload; its seq is its place in the log

IDLE_SECONDS = 1.0  # a reader is handed an empty batch after this much silence (time for a ping)
REFERENCES_KEPT = 10_000  # finished runs remembered (for a 410) after their events are dropped


class EventBuffer:
    """One run's events, appended by its driver and read by any number of readers from a sequence number."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.events: list[NamedBytes] = []  # the event with seq N is events[N - 1]
        # Each waiting reader's own future and when it began waiting: resolved True by a change,
        # False once it has waited IDLE_SECONDS. One idle timer for them all, armed only while
        # someone waits and moved lazily (a timer per wait showed in a streamed request's profile).
        self._waiters: list[tuple[asyncio.Future[bool], float]] = []
        self._idle_timer: asyncio.TimerHandle | None = None

    def extend(self, events: Sequence[NamedBytes]) -> int:
        """Add events after the others; the first one's seq."""
        first = len(self.events) + 1
        self.events.extend(events)
        if self._waiters:
            self._wake()
        return first

    def end(self, state: RunState) -> None:
        self.record = replace(self.record, state=state, last_seq=len(self.events))
        self._wake()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter, _ in waiters:
            if not waiter.done():
                waiter.set_result(True)

    def _idle(self) -> None:
        self._idle_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = []
        for waiter, since in self._waiters:
            if waiter.done():
                continue
            if now - since >= IDLE_SECONDS:
                waiter.set_result(False)
            else:
                waiting.append((waiter, since))
        self._waiters = waiting
        if waiting:
            self._idle_timer = loop.call_at(waiting[0][1] + IDLE_SECONDS, self._idle)

    async def _changed(self) -> bool:
        """Wait for new events or the end, for up to IDLE_SECONDS; whether they came."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        now = loop.time()
        self._waiters.append((waiter, now))
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(now + IDLE_SECONDS, self._idle)
        return await waiter

    @property
    def last_seq(self) -> int:
        return len(self.events)

    async def read(self, after: int) -> AsyncIterator[list[LoggedEvent]]:
        """The events after `after` (seq numbers start at 1 and have no gaps), then each new batch
        as it comes, until the run ended; an empty list after IDLE_SECONDS of silence."""
        index = max(after, 0)
        while True:
            if index < len(self.events):
                chunk = self.events[index:]
                yield [(seq, name, data) for seq, (name, data) in enumerate(chunk, index + 1)]
                index += len(chunk)
                continue
            if self.record.state != "running":
                return
            if not await self._changed():
                yield []


class MemoryRunLogs:
    """Logs kept in memory, each for `keep_seconds` after its run ended."""

    def __init__(self, keep_seconds: float) -> None:
        self._keep_seconds = keep_seconds
        self._buffers: dict[str, EventBuffer] = {}
        self._active: dict[str, str] = {}  # conversation id -> its running run's id
        self._references: OrderedDict[str, RunReference] = OrderedDict()
        self._expiries: set[asyncio.TimerHandle] = set()

    def begin(self, record: RunRecord) -> EventBuffer:
        buffer = EventBuffer(record)
        self._buffers[record.run_id] = buffer
        self._active[record.conversation_id] = record.run_id
        self._references[record.run_id] = RunReference(record.owner, record.conversation_id, record.message_id)
        while len(self._references) > REFERENCES_KEPT:
            self._references.popitem(last=False)
        return buffer

    def end(self, run_id: str, state: RunState) -> None:
        buffer = self._buffers[run_id]
        buffer.end(state)
        if self._active.get(buffer.record.conversation_id) == run_id:
            del self._active[buffer.record.conversation_id]
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def drop() -> None:
            self._buffers.pop(run_id, None)
            if handle is not None:
                self._expiries.discard(handle)

        handle = loop.call_later(self._keep_seconds, drop)
        self._expiries.add(handle)

    def buffer(self, run_id: str) -> EventBuffer | None:
        return self._buffers.get(run_id)

    def record(self, run_id: str) -> RunRecord | None:
        buffer = self._buffers.get(run_id)
        return None if buffer is None else replace(buffer.record, last_seq=buffer.last_seq)

    def reference(self, run_id: str) -> RunReference | None:
        return self._references.get(run_id)

    def active_run(self, conversation_id: str) -> str | None:
        return self._active.get(conversation_id)

    def aclose(self) -> None:
        for handle in self._expiries:
            handle.cancel()
        self._expiries.clear()
