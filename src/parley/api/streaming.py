"""What every streaming transport shares: SSE framing, the head wait, errors, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from datetime import UTC, datetime

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from parley.chat.run import Run
from parley.config import Settings
from parley.errors import ParleyError, as_parley_error
from parley.events import EventBatch

log = logging.getLogger("parley.stream")

# A body message of no bytes: send what is pending now rather than with what follows. An SSE
# body has everything up to its first FLUSH ready at once (SSEResponse sends that before it
# starts its tasks): sse_events flushes after the opening events if the model's first event
# has yet to arrive, and after that first batch in any case.
FLUSH = b""
# Encodes a batch of events as the bytes of one write (b"" if none of them is sent).
BatchEncoder = Callable[[EventBatch], bytes]


async def close_run(run: Run) -> None:
    """Stop a run even while the task closing it is being cancelled (a client that left)."""
    with anyio.CancelScope(shield=True):
        await run.aclose()


async def sse_events(
    run: Run,
    encode: BatchEncoder,
    opening: Iterable[bytes],
    closing: Callable[[], Iterable[bytes]],
    on_error: Callable[[ParleyError], bytes],
) -> AsyncGenerator[bytes, None]:
    """The body of an SSE response: opening events, encoded run events, closing events.

    A failure after the first byte ends the stream with an error event, never a cut.
    Leaving early (the client went away) closes the run, which stops the generation.
    """
    try:
        for message in opening:
            yield message
        if not run.head_ready:  # the model has yet to answer: the opening goes out now, on its own
            yield FLUSH
        head = True
        async with contextlib.aclosing(run.batches()) as batches:
            async for batch in batches:
                data = encode(batch)
                if data:
                    yield data
                if head:  # the first batch goes out at once; later ones as the client takes them
                    head = False
                    yield FLUSH
        for message in closing():
            yield message
    except Exception as exc:
        error = as_parley_error(exc)
        if not isinstance(exc, ParleyError):
            log.exception("run %s failed", run.id)
        yield on_error(error)
    finally:
        await close_run(run)


async def stream_run(
    settings: Settings,
    run: Run,
    encode: BatchEncoder,
    opening: Iterable[bytes],
    closing: Callable[[], Iterable[bytes]],
    on_error: Callable[[ParleyError], bytes],
) -> SSEResponse:
    """An SSE response for `run`, once its first event came (or the head wait ran out).

    A run that fails within the head wait raises here, before any status line is sent, so
    the client gets a real HTTP error; the run is closed either way.
    """
    try:
        await run.wait_for_head(settings.stream_head_wait_seconds)
    except BaseException:
        await close_run(run)
        raise
    body = sse_events(run, encode, opening, closing, on_error)
    return SSEResponse(body, ping_seconds=settings.sse_ping_seconds)


class SSEResponse(Response):
    """A `text/event-stream` response that sends whatever messages are ready in one write.

    Written here rather than using sse-starlette's EventSourceResponse, for cost: that one sends
    each message on its own (an ASGI send through every middleware and a socket write per token,
    inside a fresh cancel scope) and starts four anyio tasks per response; with it, Parley spent
    about twice the CPU per streamed reply (bench/overhead.py: ~2.6 ms vs ~1.3 ms for 50 chunks).
    An upstream read usually holds many tokens: here one task reads the body and another sends
    everything read so far as one chunk; both are plain asyncio tasks (an anyio task group cost
    ~4x as much to set up), and what is ready at once goes out before either starts.

    Kept from EventSourceResponse: its headers, a `: ping` comment after `ping_seconds` without
    a write, and a client that leaves cancels the body, which closes its run (stopping the
    upstream). Not kept: it ended every stream the moment the server was told to stop; here
    streams get uvicorn's graceful shutdown time (5 s in `parley serve`) to finish, and are then
    cancelled, which closes their runs the same way.
    """

    media_type = "text/event-stream"
    # The reader hands over what it has at this many unsent bytes (~60 chunks, well under 1 ms of
    # work), which bounds both the latency added by batching and the reading ahead of a slow client.
    high_water = 16 * 1024

    def __init__(self, body: AsyncGenerator[bytes, None], ping_seconds: float) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache, no-transform", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )
        self._body = body
        self._ping_seconds = ping_seconds
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._finished = False  # the body has ended
        self._gone = False  # the client has
        self._ping_due = False
        self._ready = asyncio.Event()  # for the sender: something to do
        self._drained = asyncio.Event()  # for the reader: the sender took what was pending
        self._last_sent = 0.0
        self._ping_timer_handle: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What is ready at once (up to the first FLUSH) goes out before any task is started: the
        # first token sooner, by a loop iteration or two.
        try:
            first, ended = await self._read_first()
        except BaseException:
            await self._body.aclose()
            raise
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if first or ended:
            await send({"type": "http.response.body", "body": first, "more_body": not ended})
        if ended:
            return
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._ping_timer_handle = loop.call_later(self._ping_seconds, self._ping_timer, loop)
        # Cancelled through an anyio scope, not Task.cancel(): a second native cancel could cut short
        # the shielded close of the run (close_run) if it came while the body was in it.
        reading = anyio.CancelScope()
        reader = loop.create_task(self._read_body(reading), name="sse-body")
        watcher = loop.create_task(self._watch_disconnect(receive), name="sse-disconnect")
        try:
            await self._send_ready(send, loop)
        finally:
            self._ping_timer_handle.cancel()
            watcher.cancel()
            # The body ended, the client left, a send failed or this task was cancelled: in every
            # case stop the body and let it close its run before returning. If this wait is itself
            # cancelled, the reader still finishes that cleanup, as a task of its own.
            if not reader.done():  # (not on the common path: a cancel formats a costly reason)
                reading.cancel()
                await asyncio.wait({reader})
        error = None if reader.cancelled() else reader.exception()
        if error is not None:
            raise error

    async def _read_first(self) -> tuple[bytes, bool]:
        """The messages up to the body's first FLUSH, and whether the body ended before one."""
        messages: list[bytes] = []
        async for message in self._body:
            if not message:
                return b"".join(messages), False
            messages.append(message)
        return b"".join(messages), True

    async def _read_body(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._read_messages()

    async def _read_messages(self) -> None:
        try:
            async for message in self._body:
                if message:
                    self._pending.append(message)
                    self._pending_bytes += len(message)
                    self._ready.set()
                    if self._pending_bytes < self.high_water:
                        continue
                if self._pending:  # FLUSH, or enough for one write: wait until the sender takes it
                    self._drained.clear()
                    await self._drained.wait()
        finally:
            self._finished = True
            self._ready.set()
            await self._body.aclose()  # cancelled while holding a message: still close the run

    async def _send_ready(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            if not self._pending and not self._finished:
                await self._ready.wait()
                self._ready.clear()
            if self._gone:
                return
            if self._pending:
                body = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                self._drained.set()
            elif self._ping_due:
                body = f": ping - {datetime.now(UTC)}\r\n\r\n".encode()
            else:
                body = b""
            self._ping_due = False
            done = self._finished and not self._pending
            if body or done:
                await send({"type": "http.response.body", "body": body, "more_body": not done})
                self._last_sent = loop.time()
            if done:
                return

    def _ping_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Asks for a ping after `ping_seconds` without a write; one timer, re-armed, not one per write."""
        quiet = loop.time() - self._last_sent
        if quiet >= self._ping_seconds:
            self._ping_due = True
            self._ready.set()
            quiet = 0.0
        self._ping_timer_handle = loop.call_later(self._ping_seconds - quiet, self._ping_timer, loop)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._ready.set()


async def collect_unless_disconnected(run: Run, receive: Receive) -> None:
    """Run to the end for a non-streamed reply; cancel the run if the client goes away first."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            await run.collect()
        except Exception as exc:  # raised outside the group, which would wrap it in an ExceptionGroup
            failure = exc
        finally:
            group.cancel_scope.cancel()
            await close_run(run)
    if failure is not None:
        raise failure
