"""One answer for a request refused by a middleware, HTTP or WebSocket handshake alike."""

from __future__ import annotations

import orjson
from starlette.types import Scope, Send

from parley.errors import ParleyError


async def refuse(scope: Scope, send: Send, error: ParleyError) -> None:
    """The error's JSON with its status (and its headers); a handshake that can't take a response
    is closed with 1008 (the server answers it with 403)."""
    body = orjson.dumps(error.to_body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": error.status_code, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
