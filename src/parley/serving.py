"""`parley serve`'s HTTP server: uvicorn, with a drain on SIGTERM and Ctrl-C before it stops.

uvicorn's own shutdown gives running requests a fixed time and then cancels them, so a stream
is cut with no final event and WebSockets are closed under a running reply. Here the first
signal stops accepting connections and hands the running work to the app's `Lifecycle`, which
lets replies finish within `shutdown_grace_seconds` and ends the rest with an error event; only
then does uvicorn's shutdown run, with nothing left to cut. A second signal ends the grace
period at once; a third stops the process the way uvicorn does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from parley.config import Settings
from parley.http_protocol import protocol_for
from parley.lifecycle import Lifecycle
from parley.sidecar import Sidecar

log = logging.getLogger("parley.serving")

# What uvicorn's own shutdown waits for connections after the drain: only the last writes.
_AFTER_DRAIN_SECONDS = 5
WS_PROTOCOL_LIMIT_FACTOR = 4


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, lifecycle: Lifecycle, grace_seconds: float, sidecar: Sidecar | None = None
    ) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_seconds = grace_seconds
        self._sidecar = sidecar or Sidecar()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._draining: asyncio.Task[None] | None = None
        self._parent_watch: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self._sidecar.active:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._parent_watch = self._sidecar.started((host, port), lambda: self.handle_exit(signal.SIGTERM, None))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._loop is None or not self.started or self._signals > 2:
            super().handle_exit(sig, frame)
        elif self._signals == 1:
            self._loop.call_soon_threadsafe(self._begin_drain)
        else:
            self._loop.call_soon_threadsafe(self._lifecycle.expire)

    def _begin_drain(self) -> None:
        log.info("shutting down: no new connections; running replies get %gs to finish", self._grace_seconds)
        for server in self.servers:
            server.close()
        self._draining = asyncio.get_running_loop().create_task(self._drain(), name="parley-drain")

    async def _drain(self) -> None:
        try:
            await self._lifecycle.drain(self._grace_seconds)
        finally:
            self.should_exit = True


def serve(app: FastAPI, settings: Settings, sidecar: Sidecar | None = None) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # Parley logs one line per request itself, with its request id
        # JSON logs: uvicorn's own records go through Parley's handler too, not uvicorn's text format.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=_AFTER_DRAIN_SECONDS,
        # Nothing in Parley reads the client's address yet, so uvicorn's rewriting of it from
        # X-Forwarded-For (a middleware layer every request passes) is off.
        proxy_headers=False,
        # Frames over max_body_bytes get an error frame from the app (the socket stays open); far
        # larger ones are refused by the protocol itself, with a 1009 close frame.
        ws_max_size=WS_PROTOCOL_LIMIT_FACTOR * settings.max_body_bytes,
        http=protocol_for(settings),  # header and body read timeouts, a capped head, JSON refusals
    )
    lifecycle: Lifecycle = app.state.lifecycle
    DrainingServer(config, lifecycle, settings.shutdown_grace_seconds, sidecar).run()
