"""Whether the server takes new work, and how it finishes the work it has when told to stop.

On SIGTERM or Ctrl-C (`parley.serving`), `drain()` refuses new requests and WebSocket messages,
lets the replies already running finish for up to the grace period, then ends the rest with a
`server_shutting_down` error that every transport sends as its last event. Each reply is saved
with what it produced. Sockets close as soon as they have no reply running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from parley.chat.run import Run
from parley.errors import ServerShuttingDown

log = logging.getLogger("parley.lifecycle")

# After the grace period, how long ended replies get to be saved and sockets to close.
SETTLE_SECONDS = 10.0


class ClosableSession(Protocol):
    """A WebSocket session: closes at once when idle, else once its reply has ended."""

    def shutting_down(self) -> None: ...


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self._runs: set[Run] = set()
        self._sessions: set[ClosableSession] = set()
        self._changed = asyncio.Event()  # a run or session ended while draining
        self._expired = asyncio.Event()  # stop waiting for replies to finish

    @property
    def running(self) -> int:
        return len(self._runs)

    def track(self, run: Run) -> None:
        """Count `run` as work in progress until it is closed (and its reply saved)."""
        self._runs.add(run)
        run.on_closed(self._run_closed)

    def _run_closed(self, run: Run) -> None:
        self._runs.discard(run)
        if self.draining:
            self._changed.set()

    def add_session(self, session: ClosableSession) -> None:
        self._sessions.add(session)
        if self.draining:
            session.shutting_down()

    def remove_session(self, session: ClosableSession) -> None:
        self._sessions.discard(session)
        if self.draining:
            self._changed.set()

    def expire(self) -> None:
        """End the grace period now (a second Ctrl-C)."""
        self._expired.set()

    async def drain(self, grace_seconds: float) -> None:
        self.draining = True
        for session in list(self._sessions):
            session.shutting_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        if self._runs:
            log.info("draining: waiting up to %gs for %d running replies", grace_seconds, len(self._runs))
        await self._wait_until(lambda: not self._runs, deadline, stop_early=self._expired)
        if self._runs:
            log.warning("grace period over: ending %d running replies", len(self._runs))
            for run in list(self._runs):
                run.stop_with(ServerShuttingDown())
        await self._wait_until(lambda: not self._runs and not self._sessions, loop.time() + SETTLE_SECONDS)

    async def _wait_until(self, done: _Check, deadline: float, stop_early: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        while not done() and not (stop_early is not None and stop_early.is_set()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            waiters = [asyncio.ensure_future(self._changed.wait())]
            if stop_early is not None:
                waiters.append(asyncio.ensure_future(stop_early.wait()))
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter


class _Check(Protocol):
    def __call__(self) -> bool: ...
