"""Run a real Parley server (uvicorn, 127.0.0.1, a free port) in a thread for a test."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from parley.app import create_app
from parley.config import Settings, load_settings
from parley.http_protocol import protocol_for
from parley.knowledge.base import KnowledgeBase
from parley.serving import WS_PROTOCOL_LIMIT_FACTOR


@contextlib.contextmanager
def running_parley(
    settings: Settings | None = None,
    *,
    ready_timeout: float = 60.0,
    wait: bool = True,
    knowledge_base: KnowledgeBase | None = None,
    **overrides: Any,
) -> Iterator[str]:
    """Yield the base URL of a Parley server built from `settings` (or from `overrides`);
    `knowledge_base`: a knowledge base in place of the server's own."""
    if settings is None:
        overrides.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="parley-test-")))
        settings = load_settings(**overrides)
    config = uvicorn.Config(
        create_app(settings, knowledge=knowledge_base),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        ws_max_size=WS_PROTOCOL_LIMIT_FACTOR * settings.max_body_bytes,
        http=protocol_for(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="parley-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_ready(base_url, ready_timeout)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(base_url: str, timeout: float) -> None:
    """Wait for /ready to answer 200 (every model loaded), or fail with its reason."""
    deadline = time.monotonic() + timeout
    reply: httpx.Response | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            reply = httpx.get(f"{base_url}/ready", timeout=5)
            if reply.status_code == 200:
                return
            if "failed" in reply.text:
                break
        time.sleep(0.05)
    raise RuntimeError(f"server not ready: {reply.text if reply is not None else 'no answer'}")
