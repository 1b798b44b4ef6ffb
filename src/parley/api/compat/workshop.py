"""The workshop chatbot's WebSocket frames, on `WS /ws/chat/{session_id}`.

Its page sends `{"message": "...", "agent": "default"}` (Parley's own message frame) and renders
`{"type": "chunk", "content": "...", "agent": "..."}` as they arrive; a reply ends with
`{"type": "complete", "agent": "..."}`, and a failure is `{"error": "message"}`. The session id
names a stored conversation, as with Parley's own frames, so the history is kept.

The page can't ask for these frames (it sends no subprotocol or anything Parley's own clients
don't), so a server chooses them for all its sockets with `websocket_frames = "workshop"`.
"""

from __future__ import annotations

from typing import Any

from parley.api.chat_events import NamedEvent
from parley.api.chat_schema import ErrorOut, MessageStart, TextDeltaOut
from parley.config import DEFAULT_AGENT


class WorkshopFrames:
    """Parley's events of one socket, as the workshop's frames (None: an event it has no frame for)."""

    def __init__(self) -> None:
        self._agent = DEFAULT_AGENT  # the running reply's agent, told by its message_start

    def encode(self, named: NamedEvent) -> dict[str, Any] | None:
        name, payload = named
        if name == "text_delta" and isinstance(payload, TextDeltaOut):
            return {"type": "chunk", "content": payload.text, "agent": self._agent}
        if name == "message_start" and isinstance(payload, MessageStart):
            self._agent = payload.agent or DEFAULT_AGENT
        elif name == "message_complete":
            return {"type": "complete", "agent": self._agent}
        elif name == "error" and isinstance(payload, ErrorOut):
            return {"error": payload.message}
        return None  # reasoning, tool calls: the workshop's page shows only the answer
