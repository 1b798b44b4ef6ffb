"""RunHub: runs that outlive their connection. Each is driven by a task of its own that appends
its encoded events to a log; transports (the request that started it, or a resume on any
instance) read that log from a sequence number, and a cancel reaches it on whichever instance
runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import redis.asyncio as redis
from redis.exceptions import RedisError

from parley.chat.run import Run
from parley.errors import ParleyError, as_parley_error
from parley.events import EventBatch, Finish
from parley.ids import unique_hex
from parley.redis_connect import connect_redis
from parley.runs.cancel_bus import CancelBus
from parley.runs.idempotency import Idempotency, MemoryIdempotencyStore, RedisIdempotencyStore
from parley.runs.memory_log import EventBuffer, MemoryRunLogs, NamedBytes
from parley.runs.records import (
    LoggedEvent,
    RunExpired,
    RunLogUnavailable,
    RunNotFound,
    RunNotResumable,
    RunRecord,
)
from parley.runs.redis_log import RedisRunLogs

log = logging.getLogger("parley.runs")

_CANCEL_WAIT_SECONDS = 10.0
_CANCEL_POLL_SECONDS = 0.05  # how often a cancel looks whether the run it stopped has ended


class RunEncoder(Protocol):
    """One run's events as named JSON payloads: the same ones every transport sends."""

    def opening(self) -> list[NamedBytes]: ...

    def encode(self, batch: EventBatch) -> list[NamedBytes]: ...

    def closing(self) -> list[NamedBytes]: ...

    def error(self, error: ParleyError) -> list[NamedBytes]: ...


class RunHub:
    def __init__(
        self,
        instance: str,
        local: MemoryRunLogs,
        idempotency: Idempotency,
        shared: RedisRunLogs | None = None,
        client: redis.Redis | None = None,
        prefix: str = "parley",
    ) -> None:
        self.instance = instance
        self.idempotency = idempotency
        self._local = local
        self._shared = shared
        self._client = client
        self._bus = None if client is None else CancelBus(client, prefix, self.stop_local)
        self._stops: dict[str, anyio.CancelScope] = {}
        self._drivers: set[asyncio.Task[Any]] = set()  # the tasks driving runs here

    async def start(self) -> None:
        if self._shared is not None:
            await self._shared.start()
        if self._bus is not None:
            await self._bus.start()

    async def aclose(self) -> None:
        for scope in list(self._stops.values()):
            scope.cancel()
        if self._drivers:
            await asyncio.wait(self._drivers, timeout=10)
        if self._bus is not None:
            await self._bus.aclose()
        if self._shared is not None:
            await self._shared.aclose()
        self._local.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def begin(
        self, run: Run, encoder: RunEncoder, *, owner: str | None, conversation_id: str, message_id: str
    ) -> LoggedRun:
        """Make the run known (on every instance, with Redis) and log its opening events; `drive` it next."""
        record = RunRecord(run.id, owner, conversation_id, message_id, self.instance)
        buffer = self._local.begin(record)
        stop = anyio.CancelScope()
        run.bind_stop(stop.cancel)
        self._stops[run.id] = stop
        logged = LoggedRun(run, record, encoder, buffer, stop, encoder.opening())
        try:
            if self._shared is not None:
                try:
                    await self._shared.begin(record)
                except (RedisError, OSError) as exc:
                    raise RunLogUnavailable(str(exc)) from exc
            self._append(logged, logged.opening)
        except BaseException:
            self._stops.pop(run.id, None)
            with anyio.CancelScope(shield=True):
                await run.aclose()
            self._local.end(run.id, "failed")
            if self._shared is not None:
                self._shared.end(record, "failed", buffer.last_seq)
            raise
        return logged

    async def start_run(
        self, run: Run, encoder: RunEncoder, *, owner: str | None, conversation_id: str, message_id: str
    ) -> RunRecord:
        """Begin the run and drive it to its end in a task of its own (its readers read the log)."""
        logged = await self.begin(run, encoder, owner=owner, conversation_id=conversation_id, message_id=message_id)
        task = asyncio.get_running_loop().create_task(self.drive(logged), name="run-driver")
        self._drivers.add(task)  # (the loop keeps only a weak reference; drive() lets it go)
        return logged.record

    async def drive(self, logged: LoggedRun, sink: EventSink | None = None) -> None:
        """Run to its end, logging each batch's events and handing them to `sink` as well (the
        request that started the run sends them straight on, without reading them back from the log).

        The run stops only by itself, by `stop_local` (a cancel from any instance) or `stop_with` (the
        server stopping), or by the task driving it being cancelled; never because a sink's client left.
        """
        run, encoder = logged.run, logged.encoder
        task = asyncio.current_task()
        assert task is not None
        self._drivers.add(task)
        failure: ParleyError | None = None
        try:
            with logged.stop:
                async with contextlib.aclosing(run.batches()) as batches:
                    async for batch in batches:
                        events = encoder.encode(batch)
                        if events:
                            first = self._append(logged, events)
                            if sink is not None:
                                await sink(first, events, type(batch[-1]) is Finish)
        except Exception as exc:
            failure = as_parley_error(exc)
            if not isinstance(exc, ParleyError):
                log.error("run %s failed", run.id, exc_info=exc)
        finally:
            self._stops.pop(run.id, None)
            try:
                with anyio.CancelScope(shield=True):
                    await run.aclose()  # the reply is saved here, before its last events are logged
            finally:
                first, ending = self._end(logged, failure or run.interruption or run.end_failure)
                self._drivers.discard(task)
        if sink is not None:
            await sink(first, ending, True)

    async def abandon(self, logged: LoggedRun) -> None:
        """End a begun run that nobody will drive, as cancelled (its log and its reply say so)."""
        logged.stop.cancel()
        with anyio.CancelScope(shield=True):
            await self.drive(logged)

    def _end(self, logged: LoggedRun, failure: ParleyError | None) -> tuple[int, list[NamedBytes]]:
        """Log the run's last events (its closing ones, or the error that ended it) and its end;
        those events, and the first one's seq."""
        encoder = logged.encoder
        ending = encoder.closing() if failure is None else encoder.error(failure)
        first = self._append(logged, ending)
        state = logged.run.outcome or "cancelled"
        self._local.end(logged.run.id, state)
        if self._shared is not None:
            self._shared.end(logged.record, state, logged.buffer.last_seq)
        return first, ending

    def _append(self, logged: LoggedRun, events: list[NamedBytes]) -> int:
        """Log events after the run's others; the first one's seq."""
        first = logged.buffer.extend(events)
        if self._shared is not None and events:
            self._shared.append(logged.run.id, first, events)
        return first

    def stop_local(self, run_id: str) -> bool:
        """Stop `run_id` if this instance runs it (it ends as cancelled); whether it did."""
        scope = self._stops.get(run_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def _record(self, run_id: str) -> RunRecord | None:
        record = self._local.record(run_id)
        if record is None and self._shared is not None:
            record = await self._shared.record(run_id)
        return record

    async def find(self, run_id: str, owner: str | None) -> RunRecord:
        """The run's record, for its owner; a run that ended long ago raises RunExpired (410)."""
        record = await self._record(run_id)
        if record is not None:
            if not record.visible_to(owner):
                raise RunNotFound()
            return record
        reference = self._local.reference(run_id)
        if reference is None and self._shared is not None:
            reference = await self._shared.reference(run_id)
        if reference is not None and reference.visible_to(owner):
            raise RunExpired(reference)
        raise RunNotFound()

    async def resumable(self, run_id: str, owner: str | None) -> RunRecord:
        """The record of a run whose events can be read to the end; RunNotResumable if its instance died."""
        record = await self.find(run_id, owner)
        if not record.resumable:
            raise RunNotResumable(record)
        return record

    def read(self, run_id: str, after: int) -> AsyncIterator[list[LoggedEvent]]:
        """The run's events after `after`, then live until it ends (empty lists while it is quiet)."""
        buffer = self._local.buffer(run_id)
        if buffer is not None:
            return buffer.read(after)
        if self._shared is not None:
            return self._shared.read(run_id, after)
        raise RunNotFound()

    async def cancel(self, run_id: str, owner: str | None) -> RunRecord:
        """Stop the run wherever it runs and wait (a while) for it to end; its record then."""
        record = await self.find(run_id, owner)
        if record.state != "running":
            return record
        if not self.stop_local(run_id):
            if not record.alive:
                raise RunNotResumable(record)
            if self._bus is not None:
                await self._bus.publish(run_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            current = await self._record(run_id)
            if current is None or current.state != "running":
                return current or record
            await asyncio.sleep(_CANCEL_POLL_SECONDS)  # the run ends on its own instance
        return record

    async def active_run(self, conversation_id: str) -> RunRecord | None:
        """The run in progress in the conversation (on a live instance), if any."""
        run_id = self._local.active_run(conversation_id)
        if run_id is None and self._shared is not None:
            run_id = await self._shared.active_run(conversation_id)
        if run_id is None:
            return None
        record = await self._record(run_id)
        return record if record is not None and record.state == "running" and record.alive else None


EventSink = Callable[[int, list[NamedBytes], bool], Awaitable[None]]
"""Takes a run's newly logged events (the first one's seq, the events), and whether they end the
reply (its closing events, or a batch that ends with the model's finish): a sink may hold those
back to send with what follows."""


@dataclass(frozen=True, slots=True)
class LoggedRun:
    """A run made known by `RunHub.begin`, with what its driver needs."""

    run: Run
    record: RunRecord
    encoder: RunEncoder
    buffer: EventBuffer  # its log in this process: an event's seq is its place there
    stop: anyio.CancelScope
    opening: list[NamedBytes]  # its first events (seq 1 on)


def new_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{unique_hex()[:8]}"


async def open_run_hub(
    redis_url: str | None, prefix: str, *, keep_seconds: float, reference_seconds: float, idempotency_seconds: float
) -> RunHub:
    """The hub for this instance: logs in Redis Streams when there is a Redis, else in memory."""
    instance = new_instance_id()
    local = MemoryRunLogs(keep_seconds, copy_of_shared=redis_url is not None)
    if redis_url is None:
        return RunHub(instance, local, Idempotency(MemoryIdempotencyStore(idempotency_seconds)))
    client = connect_redis(redis_url, client_name=f"{prefix}:runs")
    shared = RedisRunLogs(client, prefix, instance, keep_seconds, reference_seconds)
    idempotency = Idempotency(RedisIdempotencyStore(client, prefix, idempotency_seconds))
    hub = RunHub(instance, local, idempotency, shared, client, prefix)
    try:
        await hub.start()
    except BaseException:
        await hub.aclose()
        raise
    return hub
