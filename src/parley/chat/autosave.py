"""Replies saved while they stream, so a crash loses at most `reply_save_seconds` of text.

One task per server writes every live reply that produced something since the last write, all
in one transaction, once per interval: the cost follows the interval, not the tokens. Replies
with nothing new have their `saved_at` refreshed now and then, which tells the other servers of a
shared database that they are still being written; a reply whose server died stops being
refreshed, and any server's sweep marks it failed, with the text saved so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from parley.chat.run import Run
from parley.store import ConversationStore, ReplyProgress

log = logging.getLogger("parley.autosave")

# In intervals: how often a live reply with nothing new is marked alive, and how long after its
# last mark another server takes it for dead.
HEARTBEAT_INTERVALS = 5
STALE_HEARTBEATS = 3


@dataclass(slots=True)
class _Watched:
    run: Run
    keep_reasoning: bool
    saved_pieces: int
    written_at: float


class ReplyAutosave:
    def __init__(self, store: ConversationStore, interval: float, *, shared: bool) -> None:
        self._store = store
        self._interval = interval
        self._shared = shared  # other servers may write the same database
        self._heartbeat = interval * HEARTBEAT_INTERVALS
        self._watched: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def stale_after(self) -> timedelta:
        """How long a reply may go unsaved before it counts as abandoned by its server."""
        return timedelta(seconds=self._heartbeat * STALE_HEARTBEATS) if self._shared else timedelta(0)

    def watch(self, message_id: str, run: Run, *, keep_reasoning: bool) -> None:
        now = asyncio.get_running_loop().time()
        self._watched[message_id] = _Watched(run, keep_reasoning, 0, now)

    def forget(self, message_id: str) -> None:
        self._watched.pop(message_id, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_saving(), name="parley-autosave")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def save_now(self) -> None:
        """Write what the live replies produced since their last write."""
        now = asyncio.get_running_loop().time()
        progress: list[ReplyProgress] = []
        alive: list[str] = []
        for message_id, watched in list(self._watched.items()):
            run = watched.run
            if run.pieces != watched.saved_pieces:
                reasoning = run.reasoning if watched.keep_reasoning else None
                progress.append(ReplyProgress(message_id, run.text, reasoning))
                watched.saved_pieces, watched.written_at = run.pieces, now
            elif now - watched.written_at >= self._heartbeat:
                alive.append(message_id)
                watched.written_at = now
        await self._store.save_progress(progress, alive)

    async def _keep_saving(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._heartbeat
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.save_now()
                if self._shared and loop.time() >= next_sweep:
                    next_sweep = loop.time() + self._heartbeat
                    failed = await self._store.fail_interrupted(older_than=self.stale_after)
                    if failed:
                        log.warning("marked %d replies abandoned by a stopped server as failed", failed)
            except Exception:  # the store may be away for a while: the next round tries again
                log.warning("could not save the replies in progress", exc_info=True)
