"""The edge of access: a pure ASGI middleware that decides each request's principal once.

It leaves the principal in `scope["state"][PRINCIPAL_STATE]`, where transports read it
(`principal_of`). On a server that runs open, the principal is the open one, with the end user
an application names in `X-Parley-User` (conversations are then private between end users).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from parley.access.principal import OPEN, PRINCIPAL_STATE, Principal
from parley.errors import InvalidRequest

END_USER_HEADER = b"x-parley-user"
MAX_END_USER_CHARS = 128


def end_user_of(value: str | bytes | None) -> str | None:
    """The end user an application names (header or OpenAI `user` field); None when it names none."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if len(text) > MAX_END_USER_CHARS or not text.isprintable():
        raise InvalidRequest(
            f"the end user must be at most {MAX_END_USER_CHARS} printable characters",
            param="user",
            code="invalid_end_user",
        )
    return text


class AccessMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("state", {})[PRINCIPAL_STATE] = self._principal(scope)
        await self._app(scope, receive, send)

    @staticmethod
    def _principal(scope: Scope) -> Principal:
        for name, value in scope["headers"]:
            if name == END_USER_HEADER:
                end_user = end_user_of(value)
                return OPEN if end_user is None else Principal(end_user=end_user)
        return OPEN
