"""Log lines that name their request and can't be forged.

The request id lives in a context variable, set once per request by the outermost middleware:
code anywhere in the request's task, or in tasks started from it (asyncio copies the context),
reads it with `current_request_id()` without it being passed down.

Text a client or an upstream chose (a path, an upstream's error body) goes through
`printable()` before it is logged, so a newline in it can't start a forged log line.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar

NO_REQUEST = "-"

request_id: ContextVar[str] = ContextVar("parley_request_id", default=NO_REQUEST)

# What a client-chosen X-Request-ID may be; anything else is replaced by a fresh id.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def current_request_id() -> str:
    """The id of the request this code runs for, or "-" outside any request."""
    return request_id.get()


def client_request_id(raw: bytes | None) -> str | None:
    """A client's X-Request-ID if it is safe to log and echo, else None."""
    if raw is None or _SAFE_REQUEST_ID.fullmatch(raw) is None:
        return None
    return raw.decode("ascii")


def printable(text: str) -> str:
    """`text` with control and other unprintable characters written as escapes (`\\n`, `\\x1b`).

    Nearly free for ordinary text: one `isprintable()` scan, no copy.
    """
    if text.isprintable():
        return text
    # repr escapes exactly the characters isprintable() refuses.
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class EscapingFormatter(logging.Formatter):
    """Escapes unprintable characters in a record's message, whoever logged it.

    A traceback, appended after the message, keeps its own lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))
