"""What every streaming transport shares: SSE framing, the head wait, errors, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from parley.chat.run import Run
from parley.config import Settings
from parley.errors import ParleyError, as_parley_error
from parley.events import EventBatch, Finish
from parley.logs import current_request_id

log = logging.getLogger("parley.stream")


class StreamFormat(Protocol):
    """A wire format for a run's events: what goes before, for each batch, after, and on failure."""

    def opening(self) -> bytes: ...

    def encode(self, batch: EventBatch) -> bytes:
        """One write for a batch of events (b"" if none of them is sent)."""
        ...

    def closing(self) -> bytes: ...

    def error(self, error: ParleyError) -> bytes: ...


async def close_run(run: Run) -> None:
    """Stop a run even while the task closing it is being cancelled (a client that left)."""
    with anyio.CancelScope(shield=True):
        await run.aclose()


async def stream_run(settings: Settings, run: Run, wire: StreamFormat) -> SSEResponse:
    """An SSE response for `run`, once its first event came (or the head wait ran out).

    A run that fails within the head wait raises here, before any status line is sent, so
    the client gets a real HTTP error; the run is closed either way.
    """
    try:
        await run.wait_for_head(settings.stream_head_wait_seconds)
    except BaseException:
        await close_run(run)
        raise
    return SSEResponse(run, wire, ping_seconds=settings.sse_ping_seconds)


class ClientWatch:
    """The one task that waits for a streaming request's client to leave (its `http.disconnect`),
    from when its route begins watching (while it waits for a run's first event, say) to the end
    of its response. Cheaper than asking Starlette's `Request.is_disconnected()` on the way, whose
    cancelled receive showed in a streamed request's profile."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._then: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._wait(receive), name="client-watch"
        )

    async def _wait(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._then is not None:
            self._then()

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the client leaves (at once if it has left)."""
        self._then = callback
        if self.gone:
            callback()

    def stop(self) -> None:
        # Dropped, not only cancelled: the task and the callback would otherwise hold this watch and
        # its response (with its run) in reference cycles that only the garbage collector frees;
        # a streamed request ran about 10% slower with them (bench/overhead.py).
        self._then = None
        if self._task is not None:
            self._task.cancel()
            self._task = None


class RunSSEResponse(Response):
    """A `text/event-stream` of a run's events: one write per batch of events, as they come.

    Written here rather than using sse-starlette's EventSourceResponse, for cost: that one sends
    each message on its own (an ASGI send through every middleware and a socket write per token,
    inside a fresh cancel scope) and starts four anyio tasks per response; with it, Parley spent
    about twice the CPU per streamed reply. Here the model's batches (one upstream read each) are
    the writes, the opening goes out with the first batch when that is ready, and the closing
    events with the end of the body; the only task is the one that watches for the client leaving.

    Kept from EventSourceResponse: its headers, a `: ping` comment after `ping_seconds` without
    a write, and a client that leaves cancels the body, which closes its run (stopping the
    upstream). A failure after the first byte ends the stream with an error event, never a cut.
    Not kept: it ended every stream the moment the server was told to stop; here streams get
    the drain's grace period (`parley.lifecycle`) to finish, and are then ended with an error event.
    """

    media_type = "text/event-stream"

    def __init__(self, run: Run, ping_seconds: float, watch: ClientWatch | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache, no-transform", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )
        self._run = run
        self._ping_seconds = ping_seconds
        self._send: Send | None = None
        self._last_sent = 0.0
        self._writing = False
        self._pinging: asyncio.Task[None] | None = None
        self._ping_timer_handle: asyncio.TimerHandle | None = None
        self._watch = watch  # (one the route began watching with, if it did)
        self._gone = False  # the client left
        self._pending = b""  # written with the closing events: the reply's last batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self._send = send
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_sent = loop.time()
        self._ping_timer_handle = loop.call_later(self._ping_seconds, self._ping_timer, loop)
        watch = self._watch or ClientWatch(receive)
        try:
            await self._read_run(watch, loop)
        finally:
            if self._ping_timer_handle is not None:
                self._ping_timer_handle.cancel()
            watch.stop()
            if self._pinging is not None:
                self._pinging.cancel()
            if not self._run.closed:
                await close_run(self._run)  # the reply is saved here, before its last events go out
        if not self._gone:
            await send({"type": "http.response.body", "body": self._pending + self._ending(), "more_body": False})

    async def _read_run(self, watch: ClientWatch, loop: asyncio.AbstractEventLoop) -> None:
        """Write the run's events until it ends; the OpenAI habit: a client that leaves cancels its reply."""
        # Cancelled through an anyio scope, not Task.cancel(): a second native cancel could cut short
        # the shielded close of the run (close_run) that follows. The client leaving cancels it,
        # and so does the run being ended from outside (the server stopping: stop_with).
        reading = anyio.CancelScope()
        self._run.bind_stop(reading.cancel)

        def left() -> None:
            self._gone = True
            reading.cancel()

        watch.then(left)
        with reading:
            await self._write_events(loop)

    async def _write_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the run's events as they come, keeping back in `_pending` what ends the reply."""
        raise NotImplementedError

    def _ending(self) -> bytes:
        """What the body's last write adds to `_pending`."""
        raise NotImplementedError

    async def _write(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        assert self._send is not None
        if self._gone:
            return
        self._writing = True
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self._writing = False
        self._last_sent = loop.time()

    def _ping_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        """A ping after `ping_seconds` without a write; one timer, re-armed, not one per write."""
        if self._gone:
            return
        quiet = loop.time() - self._last_sent
        if quiet >= self._ping_seconds and not self._writing and (self._pinging is None or self._pinging.done()):
            self._pinging = loop.create_task(self._ping(loop), name="sse-ping")
            quiet = 0.0
        self._ping_timer_handle = loop.call_later(self._ping_seconds - quiet, self._ping_timer, loop)

    async def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        await self._write(f": ping - {datetime.now(UTC)}\r\n\r\n".encode(), loop)


class SSEResponse(RunSSEResponse):
    """A run's events in a wire format of the transport's (`StreamFormat`), read from the run itself."""

    def __init__(self, run: Run, wire: StreamFormat, ping_seconds: float) -> None:
        super().__init__(run, ping_seconds)
        self._wire = wire
        self._failure: ParleyError | None = None

    def _ending(self) -> bytes:
        """The closing events, or the error that ended the run (or that kept its reply from being saved)."""
        failure = self._failure or self._run.interruption or self._run.end_failure
        return self._wire.closing() if failure is None else self._wire.error(failure)

    async def _write_events(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the opening and the run's batches, keeping back in `_pending` what ends the reply."""
        self._pending = self._wire.opening()
        try:
            async with contextlib.aclosing(self._run.batches()) as batches:
                if not self._run.head_ready:  # the model has yet to answer: the opening goes out now
                    await self._write(self._pending, loop)
                    self._pending = b""
                async for batch in batches:
                    data = self._pending + self._wire.encode(batch)
                    if isinstance(batch[-1], Finish):
                        # The reply is over (a Finish is always last): this goes with the closing
                        # events, in the body's last write.
                        self._pending = data
                        continue
                    self._pending = b""
                    if data:
                        await self._write(data, loop)
        except Exception as exc:
            self._failure = as_parley_error(exc)
            if not isinstance(exc, ParleyError):
                log.exception("%s run %s failed", current_request_id(), self._run.id)


async def collect_unless_disconnected(run: Run, receive: Receive) -> None:
    """Run to the end for a non-streamed reply; cancel the run if the client goes away first."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        run.bind_stop(group.cancel_scope.cancel)
        try:
            await run.collect()
        except Exception as exc:  # raised outside the group, which would wrap it in an ExceptionGroup
            failure = exc
        finally:
            group.cancel_scope.cancel()
            await close_run(run)
    failure = failure or run.interruption or run.end_failure
    if failure is not None:
        raise failure
