"""What authentication costs a request: the access middleware alone, open vs. requiring keys.

Drives `AccessMiddleware` directly (no server, no network) over a SQLite key store, with an app
behind it that does nothing, and prints the time per request for: a server that runs open, the
admin key, a cached API key, a cached API key with an end user, and an unknown key after its
first (cached) refusal. The chat path's own cost is `bench/overhead.py`'s; this is the part
access adds to it, and should stay a few microseconds.

    uv run python bench/access_edge.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))
from parley.access.authenticator import Authenticator
from parley.access.edge import AccessMiddleware
from parley.access.key_store import KeySettings, KeyStore
from parley.access.keys import KeyHasher
from parley.store import create_engine, migrate


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request"}


async def _send(message: Any) -> None:
    return None


def _scope(app: Any, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers, "app": app}


async def _per_request_us(middleware: AccessMiddleware, app: Any, headers: list[tuple[bytes, bytes]], n: int) -> float:
    await middleware(_scope(app, headers), _receive, _send)  # the first lookup fills the cache
    started = time.perf_counter()
    for _ in range(n):
        await middleware(_scope(app, headers), _receive, _send)
    return (time.perf_counter() - started) / n * 1e6


async def bench(requests: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="parley-bench-access-"))
    engine = create_engine(f"sqlite:///{folder / 'parley.db'}")
    await migrate(engine)
    hasher = KeyHasher(secrets.token_bytes(32))
    keys = KeyStore(engine, hasher)
    _, key = await keys.create(KeySettings(name="bench"))
    admin_key = secrets.token_urlsafe(32)
    authenticator = Authenticator(keys, admin_key, cache_seconds=5.0, invalidations_live=lambda: True)
    middleware = AccessMiddleware(_nothing)
    open_app = SimpleNamespace(state=SimpleNamespace(access=None))
    keyed_app = SimpleNamespace(state=SimpleNamespace(access=SimpleNamespace(authenticator=authenticator)))
    bearer = (b"authorization", f"Bearer {key}".encode())
    cases = [
        ("open server", open_app, []),
        ("open server, X-Parley-User", open_app, [(b"x-parley-user", b"alice")]),
        ("admin key", keyed_app, [(b"authorization", f"Bearer {admin_key}".encode())]),
        ("API key (cached)", keyed_app, [bearer]),
        ("API key (cached), X-Parley-User", keyed_app, [bearer, (b"x-parley-user", b"alice")]),
        ("unknown key (refusal cached)", keyed_app, [(b"x-api-key", b"pk-" + b"x" * 43)]),
    ]
    print(f"{'case':<36} {'µs/request':>10}")
    for name, app, headers in cases:
        print(f"{name:<36} {await _per_request_us(middleware, app, headers, requests):>10.2f}")
    await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="requests per case (default 200000)")
    asyncio.run(bench(parser.parse_args().requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
