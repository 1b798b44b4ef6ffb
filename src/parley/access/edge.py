"""The edge of access: a pure ASGI middleware that decides each request's principal once.

It leaves the principal in `scope["state"][PRINCIPAL_STATE]`, where transports read it
(`principal_of`). On a server that runs open, the principal is the open one, with the end user
an application names in `X-Parley-User` (conversations are then private between end users).

On a server that requires keys (`app.state.access` set by the lifespan), a request names its key
as `Authorization: Bearer pk-…` or `x-api-key: pk-…`; a WebSocket may instead offer the
subprotocols `parley` and `parley.key.pk-…` (a browser can't set headers; the server answers
with `parley`), or send its key in its first frame (`parley.access.ws_auth`). Every route but
`/health`, `/ready`, the docs and CORS preflights answers 401 without a valid key, in OpenAI's
error shape with `WWW-Authenticate: Bearer`. Keys never reach a log: only the key's name does.
"""

from __future__ import annotations

import re
from dataclasses import replace

from starlette.types import ASGIApp, Receive, Scope, Send

from parley.access.authenticator import Authenticator
from parley.access.principal import OPEN, PRINCIPAL_STATE, Principal
from parley.api.refusal import refuse
from parley.errors import AuthenticationFailed, InvalidRequest, ParleyError

END_USER_HEADER = b"x-parley-user"
MAX_END_USER_CHARS = 128
# What an end user's name may not hold (it reaches logs and headers): control characters and line
# breaks. The OpenAPI document states it as END_USER_PATTERN.
_CONTROL = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
END_USER_PATTERN = f"^[^{_CONTROL}]*$"
_UNPRINTABLE = re.compile(f"[{_CONTROL}]")
WS_PROTOCOL = "parley"
WS_KEY_PROTOCOL = "parley.key."
WS_FRAME_AUTH_PREFIX = "/ws/"  # WebSocket routes that read a key from the first frame
AUTH_PENDING = "auth_pending"  # in scope["state"]: the WebSocket must authenticate with its first frame
PUBLIC_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/static-offline-docs/", "/assets/")  # the docs' and the chat page's scripts and styles

# Who a request is before its key is known: owns nothing, may use nothing (a route that forgot to
# authenticate fails closed, instead of seeing everything as OPEN would).
NOBODY = Principal(key_id="", alias="unauthenticated", models=frozenset(), agents=frozenset())

_BEARER = b"bearer "
_KEY_MISSING = (
    "an API key is required: send it as `Authorization: Bearer pk-...` or `x-api-key: pk-...` "
    "(create one with `parley keys create --name NAME`)"
)
_KEY_REFUSED = "invalid API key: it is unknown, revoked or expired"


def end_user_of(value: str | bytes | None) -> str | None:
    """The end user an application names (header or OpenAI `user` field); None when it names none."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if len(text) > MAX_END_USER_CHARS or _UNPRINTABLE.search(text) is not None:
        raise InvalidRequest(
            f"the end user must be at most {MAX_END_USER_CHARS} characters, with no control characters",
            param="user",
            code="invalid_end_user",
        )
    return text


def with_end_user(principal: Principal, end_user: str | None) -> Principal:
    return principal if end_user is None or end_user == principal.end_user else replace(principal, end_user=end_user)


class AccessMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self._app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        access = scope["app"].state.access if "app" in scope else None
        try:
            if access is None:
                state[PRINCIPAL_STATE] = _open_principal(scope)
            else:
                principal = await _authenticated(scope, access.authenticator)
                if principal is None:
                    raise AuthenticationFailed(_KEY_MISSING, code="missing_api_key")
                state[PRINCIPAL_STATE] = principal
        except ParleyError as error:
            await _refuse(scope, send, error)
            return
        await self._app(scope, receive, send)


def _open_principal(scope: Scope) -> Principal:
    for name, value in scope["headers"]:
        if name == END_USER_HEADER:
            end_user = end_user_of(value)
            return OPEN if end_user is None else Principal(end_user=end_user)
    return OPEN


async def _authenticated(scope: Scope, authenticator: Authenticator) -> Principal | None:
    """The request's principal; None when it sends no key where one is needed; AuthenticationFailed
    for a key Parley doesn't accept."""
    path = _route_path(scope)
    if scope["type"] == "http" and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or _is_preflight(scope)):
        return NOBODY
    if _is_chat_page(scope, path):  # the page asks for a key itself, when the API answers 401
        return NOBODY
    key: str | None = None
    end_user: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == _BEARER:
                key = value[7:].strip().decode("latin-1")
        elif name == b"x-api-key":
            key = key or value.strip().decode("latin-1")
        elif name == END_USER_HEADER:
            end_user = value
    if not key and scope["type"] == "websocket":
        key = _subprotocol_key(scope)
        if key is None and path.startswith(WS_FRAME_AUTH_PREFIX):
            scope["state"][AUTH_PENDING] = True
            return NOBODY
    if not key:
        return None
    principal = await authenticator.principal_for(key, end_user_of(end_user))
    if principal is None:
        raise AuthenticationFailed(_KEY_REFUSED)
    return principal


def _subprotocol_key(scope: Scope) -> str | None:
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(WS_KEY_PROTOCOL):
            return str(protocol[len(WS_KEY_PROTOCOL) :])
    return None


def _is_preflight(scope: Scope) -> bool:
    return scope["method"] == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in scope["headers"]
    )


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _refuse(scope: Scope, send: Send, error: ParleyError) -> None:
    await refuse(scope, send, error)


def _is_chat_page(scope: Scope, path: str) -> bool:
    """A browser asking for the chat page at `/` (StreamForge's JSON at the same path still needs a key)."""
    if scope["type"] != "http" or path != "/" or scope["method"] not in ("GET", "HEAD"):
        return False
    return any(name == b"accept" and b"text/html" in value for name, value in scope["headers"])
