"""The frames a client sends on `WS /ws/chat/{session_id}`, and how one is read."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.errors import InvalidRequest


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    message: str = Field(min_length=1)
    model: str | None = None
    agent: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


class ControlFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel", "ping"]


def parse_frame(text: str | bytes, *, max_bytes: int, max_depth: int) -> MessageFrame | ControlFrame:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidRequest(f"frame is larger than the limit of {max_bytes} bytes", code="frame_too_large")
    try:
        data = json.loads(text)  # bytes: a binary frame, JSON in UTF-8 (json refuses other encodings)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidRequest(f"frame is not valid JSON in UTF-8: {exc}", code="invalid_frame") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("a frame is a JSON object", code="invalid_frame")
    try:
        if data.get("type", "message") == "message":
            return MessageFrame.model_validate(data)
        return ControlFrame.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], code="invalid_frame") from exc
