"""Run logs in this process's memory: the whole log of a single instance, and the fast local
copy of a Redis-backed one (a reader on the run's own instance never goes to Redis)."""

from __future__ import annotations

import asyncio
from array import array
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from itertools import accumulate, chain
from typing import overload

from parley.runs.records import LoggedEvent, RunRecord, RunReference, RunState

NamedBytes = tuple[bytes, bytes]  # an event's name and JSON payload; its seq is its place in the log

IDLE_SECONDS = 1.0  # a reader is handed an empty batch after this much silence (time for a ping)
REFERENCES_KEPT = 10_000  # finished runs remembered (for a 410) after their events are dropped
ENDED_KEPT = 5_000  # finished runs' events kept at most (the oldest are dropped first: a resume then gets 410)


class EventBuffer:
    """One run's events, appended by its driver and read by any number of readers from a sequence number."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.events: list[NamedBytes] | PackedEvents = []  # the event with seq N is events[N - 1]
        # Each waiting reader's own future and when it began waiting: resolved True by a change,
        # False once it has waited IDLE_SECONDS. One idle timer for them all, armed only while
        # someone waits and moved lazily (a timer per wait showed in a streamed request's profile).
        self._waiters: list[tuple[asyncio.Future[bool], float]] = []
        self._idle_timer: asyncio.TimerHandle | None = None

    def extend(self, events: Sequence[NamedBytes]) -> int:
        """Add events after the others (while the run runs); the first one's seq."""
        first = len(self.events) + 1
        assert isinstance(self.events, list)
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

    def pack(self) -> None:
        """Keep the events of a run that ended compactly, for the time they are kept."""
        self.events = PackedEvents(self.events)

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
    """Logs kept in memory, each for `keep_seconds` after its run ended (the newest `ENDED_KEPT` at
    most: a busy server's memory is bounded by that, not by its rate times `keep_seconds`).

    As the local copy of logs kept in Redis (`copy_of_shared`), a log is dropped when its run
    ends: Redis keeps it as long, and a later reader here reads it there."""

    def __init__(self, keep_seconds: float, *, copy_of_shared: bool = False) -> None:
        self._keep_seconds = keep_seconds
        self._copy_of_shared = copy_of_shared
        self._buffers: dict[str, EventBuffer] = {}
        self._active: dict[str, str] = {}  # conversation id -> its running run's id
        self._references: OrderedDict[str, RunReference] = OrderedDict()
        # Ended runs, oldest first, with when each is dropped (the same keep for all: in order).
        self._ended: deque[tuple[float, str]] = deque()
        self._sweep_timer: asyncio.TimerHandle | None = None

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
        if self._copy_of_shared:
            del self._buffers[run_id]  # (its readers here keep reading the buffer they have)
            return
        buffer.pack()
        loop = asyncio.get_running_loop()
        self._ended.append((loop.time() + self._keep_seconds, run_id))
        while len(self._ended) > ENDED_KEPT:
            self._buffers.pop(self._ended.popleft()[1], None)
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_at(self._ended[0][0], self._sweep)

    def _sweep(self) -> None:
        """Drop the logs whose time is up; one timer, set for the next one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._ended and self._ended[0][0] <= now:
            self._buffers.pop(self._ended.popleft()[1], None)
        self._sweep_timer = loop.call_at(self._ended[0][0], self._sweep) if self._ended else None

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
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None


class PackedEvents(Sequence[NamedBytes]):
    """A finished run's events in one bytes object and one array of where each part ends: two
    objects in all, where a list holds a tuple and two bytes objects an event."""

    __slots__ = ("_blob", "_ends")

    def __init__(self, events: Sequence[NamedBytes]) -> None:
        parts = list(chain.from_iterable(events))  # name, data, name, data, ...
        self._blob = b"".join(parts)
        self._ends = array("Q", accumulate(map(len, parts)))

    def __len__(self) -> int:
        return len(self._ends) // 2

    @overload
    def __getitem__(self, index: int) -> NamedBytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[NamedBytes]: ...

    def __getitem__(self, index: int | slice) -> NamedBytes | list[NamedBytes]:
        if isinstance(index, slice):
            return [self[at] for at in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = self._ends[2 * index - 1] if index else 0
        middle, end = self._ends[2 * index], self._ends[2 * index + 1]
        return self._blob[start:middle], self._blob[middle:end]
