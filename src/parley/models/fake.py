"""A scripted or echoing model: for tests, demos and trying Parley without weights."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

from parley.config import FakeConfig
from parley.events import EventBatch, Finish, ReasoningDelta, StreamEvent, TextDelta, Usage
from parley.models.base import ChatRequest, Model, estimate_tokens

BATCH_EVENTS = 256  # events a batch holds at most: bounds the work between two turns of the loop


def _chunks(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


class FakeModel(Model):
    provider = "fake"

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config.name, config.context_size)
        self._config = config
        self._replies = itertools.cycle(config.replies) if config.replies else None

    def _reply_to(self, request: ChatRequest) -> str:
        if self._replies is not None:
            return next(self._replies)
        users = [m for m in request.messages if m.role == "user"]
        return users[-1].text() if users else ""

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        reply = self._reply_to(request)
        finish: Finish = Finish("stop")
        limit = request.params.max_tokens
        if limit is not None and estimate_tokens(reply) > limit:
            reply, finish = reply[: limit * 4], Finish("length")
        for stop in request.params.stop:
            if stop and stop in reply:
                reply = reply[: reply.index(stop)]
        size = self._config.chunk_chars
        deltas: Iterator[StreamEvent] = itertools.chain(
            (ReasoningDelta(piece) for piece in _chunks(self._config.reasoning or "", size)),
            (TextDelta(piece) for piece in _chunks(reply, size)),
        )
        prompt = "".join(m.text() for m in request.messages)
        closing: list[StreamEvent] = [Usage(estimate_tokens(prompt), estimate_tokens(reply)), finish]
        delay = self._config.delay_ms / 1000
        if delay:
            for event in deltas:
                yield (event,)
                await asyncio.sleep(delay)
            yield closing
            return
        # Everything is ready at once; a long reply still goes in bounded batches, with the event
        # loop free between them, so that echoing a 2 MB message stalls no other request.
        batch = list(itertools.islice(deltas, BATCH_EVENTS))
        while following := list(itertools.islice(deltas, BATCH_EVENTS)):
            yield batch
            await asyncio.sleep(0)  # a turn for the rest of the loop, not pacing
            batch = following
        yield batch + closing
