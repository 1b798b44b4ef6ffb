"""Domain errors and their one mapping to HTTP responses and stream error events."""

from __future__ import annotations

from typing import Any

from parley.logs import current_request_id


class ParleyError(Exception):
    """An error a client should see, with the HTTP status and OpenAI error type it maps to."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message  # written by Parley: what a client may see
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}  # sent with the HTTP error, e.g. Retry-After
        self.detail = detail  # for the server log only (an upstream's own words, hosts, exceptions)

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ParleyError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(ParleyError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class ModelNotReady(ParleyError):
    status_code = 503
    error_type = "server_error"
    code = "model_not_ready"


class UpstreamError(ParleyError):
    """The model's server failed, answered nonsense, or could not be reached."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class AuthenticationFailed(ParleyError):
    """No API key, or one Parley doesn't accept (unknown, revoked, expired): 401."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="parley"'})


class PermissionDenied(ParleyError):
    """A valid key asked for what it may not use (a model, an agent, the admin API): 403."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class KeyNotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "key_not_found"


class KeyNameTaken(ParleyError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "key_name_taken"


class RateLimited(ParleyError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"


class AuthenticationRequired(ParleyError):
    """No API key was sent (or none that Parley knows): 401, with `WWW-Authenticate`."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="parley"'}, **kwargs)


class AdminOnly(ParleyError):
    """A key was sent, but what was asked for needs the admin key."""

    status_code = 403
    error_type = "permission_error"
    code = "admin_key_required"


class NotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class LimitsUnavailable(ParleyError):
    """The shared counters (Redis) can't be reached: limited requests are refused, not let through."""

    status_code = 503
    error_type = "server_error"
    code = "limits_unavailable"

    def __init__(self, message: str = "rate limits can't be checked right now; retry shortly") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class ServerShuttingDown(ParleyError):
    """The server is stopping: new work is refused, and work past the grace period is ended."""

    status_code = 503
    error_type = "server_error"
    code = "server_shutting_down"

    def __init__(self, message: str = "the server is shutting down; retry the request") -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class InternalError(ParleyError):
    status_code = 500
    error_type = "server_error"
    code = "internal_error"


def as_parley_error(exc: BaseException) -> ParleyError:
    """Every failure leaves Parley as a ParleyError; unexpected ones say no more than needed."""
    if isinstance(exc, ParleyError):
        return exc
    return InternalError(f"internal error; the server log has the details under request id {current_request_id()}")
