"""Pure ASGI middleware: request ids, one log line per request, and a body size limit.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers nothing but adds a task
and a memory stream per request and gets in the way of streamed responses.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.errors import PayloadTooLarge
from parley.ids import unique_hex

log = logging.getLogger("parley.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or unique_hex()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            too_large, receive = await self._limit_body(headers, receive)
            if too_large:
                await _send_error(send_with_id, PayloadTooLarge(too_large))
            else:
                await self._app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s %d %.1fms",
                request_id,
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
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


async def _send_error(send: Send, error: PayloadTooLarge) -> None:
    body = json.dumps(error.to_body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
