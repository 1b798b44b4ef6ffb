"""uvicorn's httptools protocol with read deadlines, a cap on the request head, and JSON refusals.

uvicorn waits for a request's head and body for as long as the client likes, so a client that
sends half a header, or less body than its Content-Length, holds a connection (and, for a body,
a running request) for minutes. Here the whole head must arrive within `header_timeout` of the
connection opening or of the previous response ending, and the whole body within `body_timeout`
of the head; otherwise the client gets a 408 (if nothing of a response was sent yet) and the
connection is closed. A head larger than `head_limit` gets a 431, a request httptools can't parse
a 400: both in the OpenAI error shape rather than uvicorn's plain text.

One timer per connection, armed at a deadline and moved lazily: a request only records its new
deadline (and the timer is re-armed when it fires early), so a keep-alive connection serving many
quick requests creates one timer per `header_timeout`, and any connection at most one per request.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from parley.config import Settings
from parley.errors import InvalidRequest, ParleyError

log = logging.getLogger("parley.http")

HEAD_LIMIT_BYTES = 64 * 1024

# What the connection is waiting for from the client: nothing (a request is being answered), the
# head of a request, or the rest of a request's body.
_NOTHING, _HEAD, _BODY = 0, 1, 2


class RequestTimeout(ParleyError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class RequestHeadTooLarge(ParleyError):
    status_code = 431
    error_type = "invalid_request_error"
    code = "request_head_too_large"


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


class TimedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    head_limit: int = HEAD_LIMIT_BYTES

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._waiting = _NOTHING
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._head_started = False  # some of the awaited head has arrived
        self._head_bytes = 0  # bytes received while the head was incomplete

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait(_HEAD, self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._stop_waiting()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._waiting == _HEAD:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_head_too_large()
            else:
                log.info("invalid HTTP request from %s: %s", self._peer(), exc)
                self._answer_and_close(InvalidRequest("invalid HTTP request", code="invalid_http_request"))
            return
        if self._waiting == _HEAD and self._head_bytes > self.head_limit:
            self._refuse_head_too_large()

    # Parser callbacks (uvicorn's, with the deadline moved on)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._waiting == _NOTHING:  # a pipelined request, arriving while an earlier one is answered
            self._wait(_HEAD, self.header_timeout)
        self._head_started = True

    def on_headers_complete(self) -> None:
        # Counting only heads that came in more than one read keeps this off the common path.
        if self._head_bytes > self.head_limit and self._head_size() > self.head_limit:
            raise _HeadTooLarge
        self._wait(_BODY, self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._waiting = _NOTHING

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting == _NOTHING and not self.transport.is_closing():
            self._wait(_HEAD, self.header_timeout)

    # The deadline

    def _wait(self, what: int, timeout: float) -> None:
        self._waiting = what
        self._head_started = False
        self._head_bytes = 0
        deadline = self.loop.time() + timeout
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _stop_waiting(self) -> None:
        self._waiting = _NOTHING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        if self._waiting == _NOTHING or self.transport.is_closing():
            return  # the next request arms the timer again
        now = self.loop.time()
        if self._answering_earlier():
            # The client is waiting for us, not we for it: its time starts when we read again.
            self._deadline = now + (self.header_timeout if self._waiting == _HEAD else self.body_timeout)
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_deadline)
            return
        self._expire()

    def _answering_earlier(self) -> bool:
        if self.flow.read_paused:  # uvicorn stopped reading: a pipelined request waits, or the app is slow to read
            return True
        cycle = self.cycle
        return self._waiting == _HEAD and cycle is not None and not cycle.response_complete

    def _expire(self) -> None:
        waiting, self._waiting = self._waiting, _NOTHING
        cycle = self.cycle
        if waiting == _HEAD and not self._head_started:
            self.transport.close()  # an idle connection: nothing to answer
            return
        part = "head" if waiting == _HEAD else "body"
        timeout = self.header_timeout if waiting == _HEAD else self.body_timeout
        log.info("closing a connection from %s: request %s not received within %gs", self._peer(), part, timeout)
        responding = waiting == _BODY and cycle is not None and cycle.response_started
        if responding:
            self.transport.close()
        else:
            after = "" if waiting == _HEAD else " of its head"
            self._answer_and_close(
                RequestTimeout(f"the request {part} did not arrive within {timeout:g} seconds{after}")
            )
        if waiting == _BODY and cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's next receive() reports the disconnect
            cycle.message_event.set()

    # Answers written by the protocol itself

    def _refuse_head_too_large(self) -> None:
        self._answer_and_close(
            RequestHeadTooLarge(f"the request line and headers are larger than the limit of {self.head_limit} bytes")
        )

    def _answer_and_close(self, error: ParleyError) -> None:
        self._stop_waiting()
        if self.transport.is_closing():
            return
        body = orjson.dumps(error.to_body())
        status = http.HTTPStatus(error.status_code)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()]
        lines.extend(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        lines.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        lines.append(body)
        self.transport.write(b"".join(lines))
        self.transport.close()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) for name, value in self.headers)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


def protocol_for(settings: Settings) -> type[TimedHttpToolsProtocol]:
    """The protocol class for uvicorn's `Config(http=...)`, with the settings' timeouts."""

    class ParleyHttpProtocol(TimedHttpToolsProtocol):
        header_timeout = settings.header_timeout_seconds
        body_timeout = settings.body_timeout_seconds

    return ParleyHttpProtocol
