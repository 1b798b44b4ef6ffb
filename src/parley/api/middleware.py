"""Pure ASGI middleware: request ids, one log line per request, a body size limit, the last-resort 500.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers nothing but adds a task
and a memory stream per request and gets in the way of streamed responses.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley import logs
from parley.access.ratelimit_headers import collect_rate_limit_headers
from parley.errors import InternalError, ParleyError, PayloadTooLarge
from parley.ids import unique_hex
from parley.logs import client_request_id, printable

log = logging.getLogger("parley.access")
CLIENT_CLOSED = 499  # logged for a request whose client went away before it was answered (nginx's habit)
errors_log = logging.getLogger("parley.errors")
_NONE: list[tuple[bytes, bytes]] = []  # (never added to)


class RequestObserver(Protocol):
    def request_ended(self, scope: Scope, status: int, seconds: float) -> None:
        """An HTTP request was answered (or its client left: status 499) after `seconds`."""


class RequestContextMiddleware:
    """The outermost of Parley's middleware: ids, the access log line, the body limit, and the 500.

    An exception no handler took is answered here with a JSON 500 and logged once, with its
    traceback and request id; it is not raised on, so uvicorn keeps the connection open
    for the client's next request (Starlette's ServerErrorMiddleware re-raises, and uvicorn
    then closes it). WebSocket connections get an id too.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        observer: RequestObserver | None = None,
        *,
        rate_limit_headers: bool = False,
    ) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._observer = observer  # (metrics) None: nothing to do per request
        # Limits may apply (the lifespan decides whether they do): their x-ratelimit-* headers go
        # out with the request id, rather than through a middleware of their own, whose send
        # wrapper every message of a streamed reply would pass.
        self._rate_limit_headers = rate_limit_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await (self._websocket if scope["type"] == "websocket" else self._app)(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = client_request_id(headers.get(b"x-request-id")) or unique_hex()
        scope.setdefault("state", {})["request_id"] = request_id
        # Never reset: the server runs each request in a task of its own, whose context this changes.
        logs.request_id.set(request_id)
        started = time.perf_counter()
        status = 0
        limited = self._rate_limit_headers and scope["app"].state.limits is not None
        rate_limits = collect_rate_limit_headers() if limited else _NONE

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    *rate_limits,
                ]
            await send(message)

        try:
            too_large, receive = await self._limit_body(headers, receive)
            if too_large:
                await _send_error(send_with_id, PayloadTooLarge(too_large))
            else:
                await self._app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client left (or timed out) mid-body: nobody to answer
            status = CLIENT_CLOSED
        except Exception as exc:
            if isinstance(exc, ParleyError) and status == 0:  # an answer raised by a middleware
                await _send_error(send_with_id, exc)
            else:
                error = unexpected_error(exc, scope["method"], scope["path"])
                if status == 0:
                    await _send_error(send_with_id, error)
                # else the response had started (a stream): it stays incomplete, and uvicorn ends the connection.
        finally:
            seconds = time.perf_counter() - started
            if self._observer is not None:
                self._observer.request_ended(scope, status, seconds)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %s %d %.1fms",
                    request_id,
                    scope["method"],
                    printable(scope["path"]),
                    status,
                    seconds * 1000,
                    extra={"access": (scope, status, seconds * 1000)},  # for JSON lines' fields
                )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = client_request_id(dict(scope["headers"]).get(b"x-request-id")) or unique_hex()
        scope.setdefault("state", {})["request_id"] = request_id
        logs.request_id.set(request_id)
        started = time.perf_counter()
        close_code: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal close_code
            kind = message["type"]
            if kind == "websocket.accept":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif kind == "websocket.close":
                close_code = message.get("code", 1000)
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                milliseconds = (time.perf_counter() - started) * 1000
                log.info(
                    "%s WEBSOCKET %s %s %.1fms",
                    request_id,
                    printable(scope["path"]),
                    "-" if close_code is None else close_code,
                    milliseconds,
                    extra={"access": (scope, 0 if close_code is None else close_code, milliseconds)},
                )

    async def _limit_body(self, headers: dict[bytes, bytes], receive: Receive) -> tuple[str | None, Receive]:
        limit = self._max_body_bytes
        refusal = f"request body is larger than the limit of {limit} bytes"
        length = headers.get(b"content-length")
        if length is not None:
            return (refusal if length.isdigit() and int(length) > limit else None), receive
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return None, receive
        # A chunked body states no length: read it here, within the limit, and replay it.
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, receive
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                return refusal, receive
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


def unexpected_error(exc: BaseException, method: str, path: str) -> InternalError:
    """Log an exception no handler took, with its traceback, and give the error its client sees."""
    request_id = logs.current_request_id()
    errors_log.error("%s unhandled error on %s %s", request_id, method, printable(path), exc_info=exc)
    return InternalError(f"internal error; the server log has the details under request id {request_id}")


async def _send_error(send: Send, error: ParleyError) -> None:
    body = json.dumps(error.to_body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
