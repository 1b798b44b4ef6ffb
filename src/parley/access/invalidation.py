"""Key changes told to every server over Redis pub/sub, each change acknowledged by every listener.

A change (create, update, revoke) is published on `{prefix}:keys:changed` as
`{"key_id", "ack"}`; every server's listener drops that key from its cache and answers on the
`ack` channel. The changer waits (up to ACK_WAIT_SECONDS) for as many answers as Redis counted
listeners, so when an admin's revoke returns, no server still accepts the key. A listener that
loses Redis reconnects, and forgets every cached key when it does (it may have missed changes);
meanwhile the cache trusts entries for `key_cache_seconds` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from parley.redis_connect import connect_redis

log = logging.getLogger("parley.access")

ACK_WAIT_SECONDS = 3.0
_RECONNECT_MAX_SECONDS = 5.0


def changes_channel(prefix: str) -> str:
    return f"{prefix}:keys:changed"


def _ack_channel(prefix: str, nonce: str) -> str:
    return f"{prefix}:keys:ack:{nonce}"


async def announce_change(client: redis.Redis, prefix: str, key_id: str) -> int:
    """Tell every server that key `key_id` changed; the number of servers that confirmed it."""
    nonce = uuid.uuid4().hex
    acks = client.pubsub()
    try:
        await acks.subscribe(_ack_channel(prefix, nonce))
        listeners = int(await client.publish(changes_channel(prefix), json.dumps({"key_id": key_id, "ack": nonce})))
        confirmed = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_WAIT_SECONDS
        while confirmed < listeners and (remaining := deadline - loop.time()) > 0:
            message = await acks.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message["type"] == "message":
                confirmed += 1
        if confirmed < listeners:
            log.warning("key %s changed: %d of %d servers confirmed in time", key_id, confirmed, listeners)
        return confirmed
    finally:
        await acks.aclose()  # type: ignore[no-untyped-call]


class KeyChangeListener:
    """Runs for the server's life: hears key changes and has `forget` drop them from the cache."""

    def __init__(self, redis_url: str, prefix: str, forget: Callable[[str | None], None]) -> None:
        # Named, so an operator (or a test) can tell the listener's connection apart in CLIENT LIST.
        self._client = connect_redis(redis_url, client_name=f"{prefix}:key-changes")
        self._prefix = prefix
        self._forget = forget
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def client(self) -> redis.Redis:
        return self._client

    @property
    def live(self) -> bool:
        """Whether changes are being heard now (else the cache keeps entries briefly)."""
        return self._subscribed.is_set()

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Begin listening; waits a moment for the first subscription (a server then starts with
        live invalidations), and carries on reconnecting in the background if Redis is down."""
        self._task = asyncio.create_task(self._listen(), name="parley-key-changes")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait_seconds)

    async def announce(self, key_id: str) -> None:
        self._forget(key_id)
        try:
            await announce_change(self._client, self._prefix, key_id)
        except (RedisError, OSError) as exc:
            log.warning("could not announce a change of key %s over Redis: %s", key_id, exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(changes_channel(self._prefix))
                self._forget(None)  # whatever changed while nobody listened is fetched again
                self._subscribed.set()
                delay = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        await self._heard(message["data"])
            except (RedisError, OSError) as exc:
                if self._subscribed.is_set():
                    log.warning("lost Redis, key changes are not heard until it is back: %s", exc)
                self._subscribed.clear()
                self._forget(None)  # entries cached while changes were heard are not to be trusted as long
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)  # a reconnect back-off, not a wait for work
            delay = min(delay * 2, _RECONNECT_MAX_SECONDS)

    async def _heard(self, data: bytes) -> None:
        try:
            change = json.loads(data)
            key_id, nonce = str(change["key_id"]), str(change["ack"])
        except (ValueError, KeyError, TypeError):
            return
        self._forget(key_id)
        await self._client.publish(_ack_channel(self._prefix, nonce), b"1")
