"""`log_format = "json"`: one JSON object per line for every log record, for log collectors.

Every line has `time`, `level`, `logger`, `message` and `request_id` (null outside a request).
The access line of each request adds `method`, `route` (the route template), `path`, `status`,
`duration_ms` and `key` (the caller's key alias, never the key), and, when the request began a
generation, `model`, `prompt_tokens` and `completion_tokens`. JSON escaping keeps a client's
newline inside its line, as `printable()` does for text lines.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from parley.access.principal import OPEN, PRINCIPAL_STATE, Principal
from parley.logs import NO_REQUEST, EscapingFormatter, current_request_id
from parley.observability.generations import request_run
from parley.observability.routes import route_of

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
ACCESS_FIELD = "access"  # the record attribute the access log line carries: (scope, status, duration_ms)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        request_id = current_request_id()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == NO_REQUEST else request_id,
        }
        access = record.__dict__.get(ACCESS_FIELD)
        if access is not None:
            entry.update(access_fields(*access))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def access_fields(scope: dict[str, Any], status: int, duration_ms: float) -> dict[str, Any]:
    principal: Principal = scope.get("state", {}).get(PRINCIPAL_STATE, OPEN)
    fields: dict[str, Any] = {
        "method": scope.get("method", "WEBSOCKET"),
        "route": route_of(scope),
        "path": scope["path"],
        "status": status,
        "duration_ms": round(duration_ms, 2),
        "key": principal.alias,
    }
    run = request_run.get()
    if run is not None:
        fields["model"] = run.model
        if run.usage is not None:
            fields["prompt_tokens"] = run.usage.prompt_tokens
            fields["completion_tokens"] = run.usage.completion_tokens
    return fields


def configure_logging(level: str, log_format: str) -> None:
    """Log records go to stderr, as text lines (escaped) or as JSON objects, one a line."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else EscapingFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":
        logging.captureWarnings(True)  # Python's warnings as records too, not lines of their own
