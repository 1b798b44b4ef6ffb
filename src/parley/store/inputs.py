"""What the store accepts: ids, names, titles, text and JSON any database keeps, page cursors.

Everything here runs before a transaction starts, so refused input never half-writes anything.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel

from parley.store.errors import InvalidStoreInput
from parley.store.records import ConversationSummary
from parley.store.schema import ID_LENGTH, NAME_LENGTH

TITLE_CHARS = 60
MAX_TITLE_CHARS = 200
# The whole string: Python's `$` also matches before a trailing newline (and ids land in headers),
# hence `(?!\n)`. Not `\Z`: the pattern is also the OpenAPI document's, which JSON Schema (ECMA)
# validators read, and there `$` is the end already.
ID_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{ID_LENGTH - 1}}}$(?!\n)")
_INT_MAX = 2**31 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def title_from(text: str, limit: int = TITLE_CHARS) -> str | None:
    """A title from a first message: whitespace collapsed, cut at a word to `limit` chars with '…'."""
    words = " ".join(text.split())
    if not words:
        return None
    if len(words) <= limit:
        return words
    cut = words[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" .,;:-") + "…"


def encode_cursor(last: ConversationSummary) -> str:
    raw = f"{last.updated_at.isoformat()}|{last.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, last_id = raw.split("|", 1)
        when = datetime.fromisoformat(moment)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidStoreInput("cursor is not one this server gave out", param="cursor") from None
    if when.tzinfo is None or not ID_PATTERN.match(last_id):
        raise InvalidStoreInput("cursor is not one this server gave out", param="cursor")
    return when, last_id


def clean_text(text: str) -> str:
    """Text any database can keep: NUL (refused by PostgreSQL) and lone surrogates become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return text


def clean_text_or_none(text: str | None, limit: int | None = None) -> str | None:
    if text is None:
        return None
    text = clean_text(text)
    return text[:limit] if limit is not None else text


def clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_text(str(key)): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise InvalidStoreInput(f"tool_calls hold a {type(value).__name__}, which JSON can't", param="tool_calls")


def plain_tool_calls(calls: Sequence[BaseModel | Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not calls:
        return None
    plain = [call.model_dump(mode="json") if isinstance(call, BaseModel) else call for call in calls]
    if not all(isinstance(call, Mapping) for call in plain):
        raise InvalidStoreInput("each tool call is an object", param="tool_calls")
    return cast(list[dict[str, Any]], clean_json(plain))


def checked_name(value: str | None, what: str) -> str | None:
    if value is not None and not 1 <= len(value) <= NAME_LENGTH:
        raise InvalidStoreInput(f"{what} name must be 1-{NAME_LENGTH} characters", param=what)
    return None if value is None else clean_text(value)


def checked_title(title: str) -> str:
    tidy = " ".join(clean_text(title).split())
    if not 1 <= len(tidy) <= MAX_TITLE_CHARS:
        raise InvalidStoreInput(f"a title is 1-{MAX_TITLE_CHARS} characters (not counting spaces at the ends)")
    return tidy


def token_count(value: int) -> int | None:
    """A token count the columns can hold; a nonsense count is dropped, never the reply with it."""
    return value if 0 <= value <= _INT_MAX else None
