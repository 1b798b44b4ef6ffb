"""The frames a client sends on `WS /ws/chat/{session_id}`, and how one is read."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.api.input_limits import Integer, MaxTokens, Name, Temperature, loads_object
from parley.errors import InvalidRequest


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    message: str = Field(min_length=1)
    model: Name | None = None
    agent: Name | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    collections: list[Name] = Field(default=[], max_length=16)  # knowledge collections the reply cites
    on_disconnect: Literal["continue", "cancel"] | None = None


class ControlFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel", "ping"]


class ResumeFrame(BaseModel):
    """Attach to a run (this socket's conversation's or any other of the caller's) after event `after`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["resume"]
    run_id: str = Field(min_length=1, max_length=100)
    after: Annotated[Integer, Field(ge=0, le=2**53)] = 0


def parse_frame(text: str | bytes, *, max_bytes: int, max_depth: int) -> MessageFrame | ControlFrame | ResumeFrame:
    """A client's frame, or an InvalidRequest for its error frame: too large (`frame_too_large`),
    nested too deep (`json_too_deep`), or not a frame (`invalid_frame`)."""
    if _size_over(text, max_bytes):
        raise InvalidRequest(f"frame is larger than the limit of {max_bytes} bytes", code="frame_too_large")
    # bytes: a binary frame, JSON in UTF-8 (orjson refuses other encodings)
    data = loads_object(text, max_depth=max_depth, what="frame", code="invalid_frame")
    try:
        if data.get("type", "message") == "message":
            return MessageFrame.model_validate(data)
        if data.get("type") == "resume":
            return ResumeFrame.model_validate(data)
        return ControlFrame.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], code="invalid_frame") from exc


def _size_over(text: str | bytes, max_bytes: int) -> bool:
    """Whether a frame's UTF-8 is over `max_bytes`, encoding text only when its length can't tell:
    a character takes one to four bytes."""
    if isinstance(text, bytes):
        return len(text) > max_bytes
    if len(text) * 4 <= max_bytes:
        return False
    if len(text) > max_bytes:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes
