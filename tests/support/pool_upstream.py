"""Scripted OpenAI-compatible endpoints for a pool's tests: each a real aiohttp server on
127.0.0.1 whose behaviour a test sets (and changes) while it runs, and which a test can kill
mid-reply and start again on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any, Literal

from aiohttp import web

from tests.support.upstream import TEXT_PIECES

Behaviour = Literal["ok", "status-400", "status-500", "status-429", "long", "silent"]

RETRY_AFTER = "30"  # what the `status-429` endpoint asks for: longer than any test waits
LONG_PIECES = 3000  # a `long` reply's pieces: it outlasts any test unless killed


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    payload = {
        "id": "chatcmpl-pool",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


class ScriptedEndpoint:
    """One deployment. `requests` counts what it received; `streaming` is set when a `long`
    reply has sent its first piece."""

    def __init__(self, behaviour: Behaviour = "ok") -> None:
        self.behaviour: Behaviour = behaviour
        self.requests = 0
        self.streaming = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pool-endpoint", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Listen (again, on the same port once it had one)."""
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def kill(self) -> None:
        """Stop listening and drop every open connection, replies in the middle included."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._runner = None

    def close(self) -> None:
        self.kill()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        behaviour = self.behaviour
        if behaviour == "status-400":
            error = {"message": "maximum context length exceeded", "code": "context_length_exceeded"}
            return web.json_response({"error": error}, status=400)
        if behaviour == "status-500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if behaviour == "status-429":
            limited = {"error": {"message": "slow down", "type": "rate_limit_error"}}
            return web.json_response(limited, status=429, headers={"Retry-After": RETRY_AFTER})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_chunk({"role": "assistant", "content": ""}))
        if behaviour == "silent":  # no token, ever: only a client that gives up ends it
            await asyncio.sleep(LONG_PIECES)
        if behaviour == "long":
            for _ in range(LONG_PIECES):
                await response.write(_chunk({"content": "tick "}))
                self.streaming.set()
                await asyncio.sleep(0.02)
        else:
            for piece in TEXT_PIECES:
                await response.write(_chunk({"content": piece}))
        await response.write(_chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.contextmanager
def scripted_endpoints(*behaviours: Behaviour) -> Iterator[list[ScriptedEndpoint]]:
    endpoints = [ScriptedEndpoint(behaviour) for behaviour in behaviours]
    try:
        for endpoint in endpoints:
            endpoint.start()
        yield endpoints
    finally:
        for endpoint in endpoints:
            endpoint.close()
