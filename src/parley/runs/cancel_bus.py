"""Cancels told to every instance over Redis pub/sub: the one running the run stops it.

A cancel is published on `{prefix}:runs:cancel` as the run's id; each instance's listener stops
that run if it runs it, and ignores it otherwise. Whoever asked watches the run's record for its
end (`RunHub.cancel`), so no acknowledgement travels back. A listener that loses Redis
reconnects with a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("parley.runs")

_RECONNECT_MAX_SECONDS = 5.0


class CancelBus:
    def __init__(self, client: redis.Redis, prefix: str, stop_local: Callable[[str], bool]) -> None:
        self._client = client
        self._channel = f"{prefix}:runs:cancel"
        self._stop_local = stop_local
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait_seconds: float = 5.0) -> None:
        self._task = asyncio.create_task(self._listen(), name="parley-run-cancels")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait_seconds)

    async def publish(self, run_id: str) -> int:
        """Ask every instance to stop `run_id`; how many instances heard it."""
        return int(await self._client.publish(self._channel, run_id.encode()))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                delay = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._stop_local(bytes(message["data"]).decode(errors="replace"))
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("lost Redis, cancels from other instances are not heard until it is back: %s", exc)
                self._subscribed.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)  # a reconnect back-off, not a wait for work
            delay = min(delay * 2, _RECONNECT_MAX_SECONDS)
