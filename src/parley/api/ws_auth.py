"""A WebSocket's key in its first frame, for browsers (which can't set headers on a WebSocket).

The first frame must be `{"type": "auth", "api_key": "pk-…", "user"?: "…"}` (`user`: the end user,
as `X-Parley-User` names one), sent within FIRST_FRAME_SECONDS of the connection opening. The
server answers `{"event": "authenticated", "data": {"key": NAME}}`; a socket that sends anything
else first, a key Parley doesn't accept, or nothing in time gets an error frame with code
`unauthorized` and is closed with 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from fastapi import WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.access.edge import AUTH_PENDING, end_user_of
from parley.access.principal import PRINCIPAL_STATE, Principal
from parley.access.startup import AccessControl
from parley.api.input_limits import loads_object
from parley.errors import AuthenticationFailed, ParleyError

FIRST_FRAME_SECONDS = 10.0
POLICY_VIOLATION = 1008
_MAX_AUTH_FRAME_BYTES = 4096


class AuthFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auth"]
    api_key: str = Field(min_length=1, max_length=256)
    user: str | None = None


def awaiting_key(socket: WebSocket) -> bool:
    return bool(socket.scope.get("state", {}).get(AUTH_PENDING))


async def authenticate_first_frame(socket: WebSocket, access: AccessControl) -> Principal | None:
    """Read and check the socket's first frame; the principal, or None once the socket is refused
    and closed. The principal is also left in the scope, where `principal_of` finds it."""
    try:
        principal = await asyncio.wait_for(_first_frame_principal(socket, access), FIRST_FRAME_SECONDS)
    except TimeoutError:
        principal = AuthenticationFailed(f"no auth frame within {FIRST_FRAME_SECONDS:g} seconds", code="unauthorized")
    if isinstance(principal, ParleyError):
        with contextlib.suppress(Exception):  # the client may be gone
            await socket.send_json({"event": "error", "data": {**principal.to_body()["error"], "code": "unauthorized"}})
            await socket.close(POLICY_VIOLATION, "unauthorized")
        return None
    socket.scope["state"][PRINCIPAL_STATE] = principal
    socket.scope["state"][AUTH_PENDING] = False
    await socket.send_json({"event": "authenticated", "data": {"key": principal.alias}})
    return principal


async def _first_frame_principal(socket: WebSocket, access: AccessControl) -> Principal | ParleyError:
    message = await socket.receive()
    if message["type"] == "websocket.disconnect":
        return AuthenticationFailed("the client left before authenticating", code="unauthorized")
    text = message.get("text")
    raw: str | bytes = text if isinstance(text, str) else message.get("bytes") or b""
    if len(raw) > _MAX_AUTH_FRAME_BYTES:
        return _needs_auth_frame()
    try:
        frame = AuthFrame.model_validate(loads_object(raw, max_depth=4, what="frame", code="unauthorized"))
        end_user = end_user_of(frame.user)
    except (ParleyError, ValidationError):
        return _needs_auth_frame()
    principal = await access.authenticator.principal_for(frame.api_key, end_user)
    if principal is None:
        return AuthenticationFailed("invalid API key: it is unknown, revoked or expired", code="unauthorized")
    return principal


def _needs_auth_frame() -> AuthenticationFailed:
    return AuthenticationFailed(
        'the first frame must be {"type": "auth", "api_key": "pk-..."} (or offer the subprotocols '
        '"parley" and "parley.key.<key>")',
        code="unauthorized",
    )
