"""Every error leaves as an OpenAI-shaped body: `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from parley.api.middleware import unexpected_error
from parley.errors import InvalidRequest, ParleyError

log = logging.getLogger("parley.errors")

# Pydantic names the member of a union that failed (`str`, `list[ContentPart]`) in an
# error's location; a client wants the field's path only.
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|null)$|\[")


def _response(error: ParleyError, status: int | None = None) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=status or error.status_code, headers=error.headers)


async def _parley_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ParleyError)
    return _response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"] if part != "body" and not _UNION_TAG.search(str(part))]
    if first["type"] == "json_invalid":
        return _response(InvalidRequest(f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"))
    param = ".".join(location) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    others = [_problem(error) for error in exc.errors()[1:]]
    if others:
        message += f" (also: {'; '.join(others[:_OTHERS_SHOWN])}"
        message += f"; and {len(others) - _OTHERS_SHOWN} more)" if len(others) > _OTHERS_SHOWN else ")"
    return _response(InvalidRequest(message, param=param, code=first["type"]))


_OTHERS_SHOWN = 5  # a body can hold thousands of mistakes; the message names the first few


def _problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"] if part != "body" and not _UNION_TAG.search(str(part)))
    return f"{location}: {error['msg']}" if location else str(error["msg"])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    headers = dict(exc.headers or {})  # a 405's Allow, a 401's WWW-Authenticate
    if exc.status_code == 405 and "Allow" in headers:
        headers["Allow"] = _allowed_methods(request) or headers["Allow"]
    error = InvalidRequest(str(exc.detail), code=code, headers=headers)
    return _response(error, exc.status_code)


def _allowed_methods(request: Request) -> str | None:
    """Every method of the path that refused this one. FastAPI has a route per method, and a 405
    names the first route's only; the OpenAPI document (built once, cached) has them all."""
    path = getattr(request.scope.get("route"), "path_format", None)
    operations = request.app.openapi().get("paths", {}).get(path, {}) if path else {}
    methods = sorted(method.upper() for method in operations if method.upper() in _HTTP_METHODS)
    return ", ".join(methods) or None


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return _response(unexpected_error(exc, request.method, request.url.path))


_HANDLERS = (
    (ParleyError, _parley_error),
    (RequestValidationError, _validation_error),
    (HTTPException, _http_error),
    # Reached through error_response (the /v1 route). Registered, it is Starlette's last resort:
    # RequestContextMiddleware answers unexpected errors before they get that far.
    (Exception, _unexpected_error),
)


async def error_response(request: Request, exc: Exception) -> JSONResponse:
    """The response for an error, for code that runs outside the app's exception middleware."""
    handler = next(handler for kind, handler in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)
