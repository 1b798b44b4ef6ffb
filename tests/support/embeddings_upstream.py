"""A real OpenAI-compatible `/v1/embeddings` server on 127.0.0.1, for the `openai` embedder's tests.

It answers each text with a deterministic vector of DIMENSION numbers (not unit length, as some
servers send), records every request, and fails on purpose for the model names in FAILURES.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

DIMENSION = 12
LEAKY_ERROR = "internal host gpu-7.corp.example failed: key sk-secret-123"
FAILURES = {"fail-500": 500, "fail-401": 401}


def vector_of(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [float(byte) - 100.0 for byte in digest[:DIMENSION]]


class EmbeddingsUpstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embeddings-upstream", daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def start(self) -> None:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        status = FAILURES.get(str(body.get("model")))
        if status is not None:
            error = {"error": {"message": LEAKY_ERROR, "type": "server_error", "param": None, "code": None}}
            return web.json_response(error, status=status)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = int(body.get("dimensions") or DIMENSION)
        data = [{"object": "embedding", "index": i, "embedding": vector_of(t)[:size]} for i, t in enumerate(texts)]
        data.reverse()  # the order of `data` is not promised: `index` says which is which
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})


@contextlib.contextmanager
def running_embeddings_upstream() -> Iterator[EmbeddingsUpstream]:
    server = EmbeddingsUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()
