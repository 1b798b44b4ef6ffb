"""Incremental Server-Sent Events decoding for upstream streams.

Written here because aiohttp has no SSE client, and line-by-line reading through its
StreamReader caps line length and costs a call per line; this decoder takes whatever bytes
arrived and returns the `data` of every event they complete, splitting in C where it can.
"""

from __future__ import annotations

MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEDecodeError(ValueError):
    pass


class SSEDecoder:
    """Feed bytes, get back the `data` payloads of the events completed by them."""

    def __init__(self) -> None:
        self._buffer = b""  # the start of an event whose blank line has yet to come

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A CRLF split between two reads is whole again here: the unfinished event is kept.
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        complete, self._buffer = (buffer[:end], buffer[end + 2 :]) if end >= 0 else (b"", buffer)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise SSEDecodeError("upstream sent an event longer than 16 MiB")
        if not complete:
            return []
        # The usual shape, split in one C call: nothing but one-line `data: ` events, i.e. every
        # newline is in an event separator followed by the next event's `data: `.
        if complete.startswith(b"data: ") and complete.count(b"\n") == 2 * complete.count(b"\n\ndata: "):
            return complete[6:].split(b"\n\ndata: ")
        payloads: list[bytes] = []
        for event in complete.split(b"\n\n"):
            # Several data lines join with newlines; `event:`, `id:`, `retry:` and `:` comments
            # carry nothing the chat API needs, and an event without data is no event.
            data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                payloads.append(b"\n".join(data))
        return payloads

    def finish(self) -> list[bytes]:
        """The event left when the stream ends without a final blank line."""
        return self.feed(b"\n\n") if self._buffer.strip() else []
