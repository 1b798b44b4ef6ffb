"""While the server drains, new requests and sockets are refused (503, or a 1012 close)."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.errors import ServerShuttingDown
from parley.lifecycle import Lifecycle

# Still answered while draining: liveness, and readiness, which says the server is going away.
_ALWAYS_ANSWERED = frozenset({"/health", "/ready"})
SERVICE_RESTART = 1012  # the WebSocket close code for "the server is restarting"


class RefuseWhileDraining:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self._app = app
        self._lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._lifecycle.draining or scope["type"] == "lifespan" or scope["path"] in _ALWAYS_ANSWERED:
            await self._app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": SERVICE_RESTART, "reason": "server shutting down"})
        else:
            error = ServerShuttingDown()
            body = orjson.dumps(error.to_body())
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
            ]
            await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
            await send({"type": "http.response.body", "body": body})
