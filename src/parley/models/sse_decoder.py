"""Incremental Server-Sent Events decoding for upstream streams.

Written here because aiohttp has no SSE client, and line-by-line reading through its
StreamReader caps line length and costs a call per line; this decoder takes whatever bytes
arrived and returns every complete event in them.
"""

from __future__ import annotations

MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEDecodeError(ValueError):
    pass


class SSEDecoder:
    """Feed bytes, get back the `data` payloads of the events completed by them."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        buffer = self._buffer + chunk
        events: list[str] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                self._data.append(value.decode("utf-8", errors="replace"))
            # `event:`, `id:`, `retry:` and `:` comments carry nothing the chat API needs.
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise SSEDecodeError("upstream sent an event line longer than 16 MiB")
        return events

    def finish(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        return self.feed(b"\n\n") if self._buffer or self._data else []
