"""OpenAI's `x-ratelimit-*` headers on the responses of limited callers.

The limits gate runs deep inside a transport, long before the response starts; it leaves the
headers in a list this middleware made for the request (a context variable: the gate and the
route run in the request's own task), and the middleware adds them to the response's start,
whatever the route, streamed or not, success or 429. Installed only when limits can apply:
otherwise requests pay nothing for it.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Headers = list[tuple[bytes, bytes]]

_pending: ContextVar[Headers | None] = ContextVar("parley_rate_limit_headers", default=None)


def add_rate_limit_headers(headers: Headers) -> None:
    """Send `headers` with this request's response (nothing happens outside an HTTP request)."""
    pending = _pending.get()
    if pending is not None and headers:
        pending[:] = headers  # (a request admits one generation; the last word stands)


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["app"].state.limits is None:  # (no limits after all: keys off)
            await self._app(scope, receive, send)
            return
        pending: Headers = []
        # Never reset: the server runs each request in a task of its own, whose context this changes.
        _pending.set(pending)

        async def send_with_limits(message: Message) -> None:
            if pending and message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *pending]
            await send(message)

        await self._app(scope, receive, send_with_limits)
