"""A run's logged events on the wire: the chat events encoded once for the log, and the SSE
response that reads a log from a sequence number (the request that started the run, or a resume)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime

import anyio
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from parley.api.chat_events import ChatEvents, NamedEvent
from parley.api.streaming import ClientWatch, RunSSEResponse
from parley.errors import ParleyError, as_parley_error
from parley.events import EventBatch, ReasoningDelta, TextDelta
from parley.logs import current_request_id
from parley.runs import LoggedEvent, LoggedRun, NamedBytes, RunHub

log = logging.getLogger("parley.stream")


class LoggedChatEvents:
    """A turn's chat events as (name, JSON) pairs for the run log (a `RunEncoder`).

    Text and reasoning deltas are framed straight from their text, as `/api/chat` does."""

    def __init__(self, events: ChatEvents) -> None:
        self._events = events

    @staticmethod
    def _named(named: NamedEvent) -> NamedBytes:
        name, payload = named
        return name.encode(), payload.model_dump_json().encode()

    def opening(self) -> list[NamedBytes]:
        return [self._named(named) for named in self._events.opening()]

    def encode(self, batch: EventBatch) -> list[NamedBytes]:
        parts: list[NamedBytes] = []
        for event in batch:
            if type(event) is TextDelta:
                parts.append((b"text_delta", b'{"text":' + orjson.dumps(event.text) + b"}"))
            elif type(event) is ReasoningDelta:
                parts.append((b"reasoning_delta", b'{"text":' + orjson.dumps(event.text) + b"}"))
            else:
                parts += map(self._named, self._events.encode(event))
        return parts

    def closing(self) -> list[NamedBytes]:
        return [self._named(named) for named in self._events.closing()]

    def error(self, error: ParleyError) -> list[NamedBytes]:
        return [self._named(ChatEvents.error(error))]


_FRAME = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n"  # (seq, name, JSON)


def sse_frame(event: LoggedEvent) -> bytes:
    return _FRAME % event


def sse_frames(first_seq: int, events: list[NamedBytes]) -> bytes:
    """Events numbered from `first_seq`, as one write."""
    return b"".join([_FRAME % (seq, name, data) for seq, (name, data) in enumerate(events, first_seq)])


def sse_error(error: ParleyError) -> bytes:
    """An error event without an `id:`, so a client's Last-Event-ID stays at the last logged event."""
    name, payload = ChatEvents.error(error)
    return b"event: %s\r\ndata: %s\r\n\r\n" % (name.encode(), payload.model_dump_json().encode())


class LoggedSSEResponse(Response):
    """`text/event-stream` of a run's log from a position, live until the run ends.

    The client leaving only stops this reading: the run goes on (its driver is not ours). A run
    that can't be followed to its end (its instance died) ends the stream with an error event."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[list[LoggedEvent]], ping_seconds: float) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache, no-transform", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        )
        self._events = events
        self._ping_seconds = ping_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        reading = anyio.CancelScope()
        watch = ClientWatch(receive)
        watch.then(reading.cancel)
        tail = b""
        last_sent = loop.time()
        try:
            with reading:
                try:
                    async for events in self._events:
                        if events:
                            data = b"".join(map(sse_frame, events))
                        elif loop.time() - last_sent >= self._ping_seconds:
                            data = f": ping - {datetime.now(UTC)}\r\n\r\n".encode()
                        else:
                            continue
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        last_sent = loop.time()
                except Exception as exc:
                    if not isinstance(exc, ParleyError):
                        log.exception("%s reading a run's events failed", current_request_id())
                    tail = sse_error(as_parley_error(exc))
        finally:
            watch.stop()
            if isinstance(self._events, AsyncGenerator):
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._events.aclose()
        if not watch.gone:
            await send({"type": "http.response.body", "body": tail, "more_body": False})


class SurvivingSSEResponse(RunSSEResponse):
    """The stream of the request that starts a run which outlives its connection.

    The request drives the run itself, as a reply that doesn't survive is driven (no task of its
    own, nothing read back from the log): each batch is logged and sent on by the same code. The
    client leaving stops only the sending; the run goes on in this request's task, and other
    readers follow the log. As on the direct path, a client that stops reading holds its run back
    once the socket's buffers are full (a reply seldom fills them)."""

    def __init__(self, hub: RunHub, logged: LoggedRun, ping_seconds: float, watch: ClientWatch) -> None:
        super().__init__(logged.run, ping_seconds, watch)
        self._hub = hub
        self._logged = logged
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _write_events(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending = sse_frames(1, self._logged.opening)
        if not self._run.head_ready:  # the model has yet to answer: the opening goes out now
            await self._write(self._pending, loop)
            self._pending = b""
        await self._hub.drive(self._logged, self._sink)

    async def _sink(self, first_seq: int, events: list[NamedBytes], ends_reply: bool) -> None:
        data = self._pending + sse_frames(first_seq, events)
        if ends_reply:  # sent with the closing events, in the body's last write
            self._pending = data
            return
        self._pending = b""
        assert self._loop is not None
        await self._write(data, self._loop)

    def _ending(self) -> bytes:
        return b""  # (the closing events, or the error, came through the sink)

    async def _read_run(self, watch: ClientWatch, loop: asyncio.AbstractEventLoop) -> None:
        """Drive the run to its end: its client leaving only stops the sending (and its stop is the
        hub's, bound when it began: a cancel from any instance)."""

        def left() -> None:
            self._gone = True

        watch.then(left)
        await self._write_events(loop)
