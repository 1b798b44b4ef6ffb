"""OpenAI's `x-ratelimit-*` headers on the responses of limited callers.

The limits gate runs deep inside a transport, long before the response starts; it leaves the
headers in a list made for the request (a context variable: the gate and the route run in the
request's own task), and the request middleware (`parley.api.middleware`) adds them to the
response's start, whatever the route, streamed or not, success or 429. Collected only when
limits can apply: otherwise requests pay nothing for it.
"""

from __future__ import annotations

from contextvars import ContextVar

Headers = list[tuple[bytes, bytes]]

_pending: ContextVar[Headers | None] = ContextVar("parley_rate_limit_headers", default=None)


def add_rate_limit_headers(headers: Headers) -> None:
    """Send `headers` with this request's response (nothing happens outside an HTTP request)."""
    pending = _pending.get()
    if pending is not None and headers:
        pending[:] = headers  # (a request admits one generation; the last word stands)


def collect_rate_limit_headers() -> Headers:
    """The list this request's headers will be in (call it in the request's own task)."""
    pending: Headers = []
    # Never reset: the server runs each request in a task of its own, whose context this changes.
    _pending.set(pending)
    return pending
