"""Cross-site requests refused at the edge; JSON bodies read whatever their content type.

CORS only stops a page on another site from reading an answer: the request itself still runs. A
"simple" cross-site POST (`text/plain`, a form) needs no preflight, and a WebSocket handshake
none at all, so any page a user visits could start a billed generation or join a conversation.
Here a request from a browser on another site is refused (403, or a refused handshake) unless
its origin is listed in `cors_origins`; requests from Parley's own pages and requests with no
Origin (curl, SDKs, servers) pass. Only requests from listed origins go through Starlette's
CORSMiddleware, which adds the CORS headers; the rest skip it.

Because a browser can no longer post here from another site, a request that passes may send its
JSON body under any content type (curl's default form type, text/plain, none): the content type
is rewritten to `application/json` before the app sees it. `multipart/form-data` is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.api.refusal import refuse
from parley.errors import ParleyError

log = logging.getLogger("parley.origin")

CORS_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAME_ORIGIN_SITES = frozenset({b"same-origin", b"none"})  # `none`: the user typed the address
_JSON = b"application/json"
_SHOWN_ORIGIN_CHARS = 200


class OriginNotAllowed(ParleyError):
    status_code = 403
    error_type = "invalid_request_error"
    code = "origin_not_allowed"


class CrossSiteGuard:
    """Refuses cross-site browser requests; sends listed origins through CORS, the rest straight on."""

    def __init__(self, app: ASGIApp, cors_origins: Sequence[str]) -> None:
        self._app = app
        self._listed = frozenset(origin.encode("latin-1") for origin in cors_origins)
        self._any_origin = b"*" in self._listed
        self._cors: ASGIApp = app
        if cors_origins:
            self._cors = CORSMiddleware(
                app,
                allow_origins=list(cors_origins),
                allow_methods=list(CORS_METHODS),
                allow_headers=["*"],
                expose_headers=["x-request-id"],
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        site = headers.get(b"sec-fetch-site")
        if origin is None and site != b"cross-site":  # not a browser's cross-site request
            app = self._app
        elif origin is not None and (self._any_origin or origin in self._listed):
            app = self._cors
            if scope.get("method") == "OPTIONS" and not await _preflight_allowed(scope, send, headers):
                return
        elif _same_origin(origin, site, headers.get(b"host")) or _a_link_followed(scope, headers):
            app = self._app
        else:
            await _refuse(scope, send, _refusal(origin))
            return
        if kind == "http" and scope["method"] in _BODY_METHODS:
            _read_body_as_json(scope, headers.get(b"content-type"))
        await app(scope, receive, send)


async def _preflight_allowed(scope: Scope, send: Send, headers: dict[bytes, bytes]) -> bool:
    """Refuses a preflight for a method CORS doesn't allow (Starlette would refuse it in plain text)."""
    requested = headers.get(b"access-control-request-method")
    if requested is None:
        return True
    method = requested.decode("latin-1")
    if method in CORS_METHODS:
        return True
    error = OriginNotAllowed(
        f"cross-origin {method[:20]} requests are not allowed (allowed: {', '.join(CORS_METHODS)})",
        code="cors_method_not_allowed",
    )
    await _refuse(scope, send, error)
    return False


def _same_origin(origin: bytes | None, site: bytes | None, host: bytes | None) -> bool:
    if site is not None:  # the browser's own verdict, which a page can't forge
        return site in _SAME_ORIGIN_SITES
    if origin is None or host is None:
        return False
    _, _, origin_host = origin.partition(b"://")
    return origin_host.lower() == host.lower()


def _a_link_followed(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """A cross-site navigation (a link to a Parley page): it can't read or change anything."""
    return (
        scope["type"] == "http"
        and scope["method"] in ("GET", "HEAD")
        and headers.get(b"sec-fetch-mode") == b"navigate"
        and b"origin" not in headers
    )


def _read_body_as_json(scope: Scope, content_type: bytes | None) -> None:
    if content_type is not None:
        kind = content_type[:19].lower()
        if kind.startswith(_JSON) or kind.startswith(b"multipart/"):
            return
    others = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
    scope["headers"] = [*others, (b"content-type", _JSON)]


def _refusal(origin: bytes | None) -> OriginNotAllowed:
    if origin is None:
        return OriginNotAllowed(
            "cross-site requests are not allowed; a page on another site must send its Origin, "
            "which must be listed in cors_origins (PARLEY_CORS_ORIGINS)"
        )
    shown = origin.decode("latin-1")[:_SHOWN_ORIGIN_CHARS]
    return OriginNotAllowed(
        f"requests from origin {shown} are not allowed; "
        f"list it in cors_origins (PARLEY_CORS_ORIGINS) to allow a page there to call Parley"
    )


async def _refuse(scope: Scope, send: Send, error: ParleyError) -> None:
    log.info("refused a cross-site %s to %s: %s", scope["type"], scope["path"], error.message)
    await refuse(scope, send, error)
