"""Run logs in Redis Streams, so that any instance can replay a run and follow it live.

Keys (under the configured prefix `P`):
- `P:run:R:events`, a stream of the run's events with ids `0-SEQ` (so "after N" is the stream id
  `0-N`), and one `1-0` entry when the run ended: a reader stops there.
- `P:run:R`, a hash: owner, conversation, message, instance, state, last_seq.
- `P:runref:R`, where the reply is stored, kept `reference_seconds` (a later resume answers 410).
- `P:conv:C:active`, the run in progress in conversation C.
- `P:instance:I`, the lease of a live instance, refreshed while it runs: a running run whose
  instance's lease is gone is not resumable (its instance died; nothing generates it again).
Writes are one pipeline per model batch. Running runs' keys expire after a day at most; ended
ones `keep_seconds` after they ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from parley.runs.records import LoggedEvent, RunNotResumable, RunRecord, RunReference, RunState

log = logging.getLogger("parley.runs")

LEASE_SECONDS = 6
_LEASE_REFRESH_SECONDS = 2.0
_RUNNING_TTL_SECONDS = 86_400  # a running run's keys, should its instance never end it
_IDLE_MS = 1000
_END_ID = b"1-0"
_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisRunLogs:
    def __init__(
        self, client: redis.Redis, prefix: str, instance: str, keep_seconds: float, reference_seconds: float
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.instance = instance
        self._keep_ms = max(int(keep_seconds * 1000), 1)
        self._reference_ms = max(int(reference_seconds * 1000), 1)
        self._lease: asyncio.Task[None] | None = None
        self._delete_if_equal = client.register_script(_DELETE_IF_EQUAL)

    def _run(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}"

    def _events(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}:events"

    def _active(self, conversation_id: str) -> str:
        return f"{self._prefix}:conv:{conversation_id}:active"

    def _instance(self, instance: str) -> str:
        return f"{self._prefix}:instance:{instance}"

    async def start(self) -> None:
        await self._client.set(self._instance(self.instance), b"1", ex=LEASE_SECONDS)
        self._lease = asyncio.create_task(self._keep_lease(), name="parley-run-lease")

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(_LEASE_REFRESH_SECONDS)  # a lease's period, not a wait for work
            try:
                await self._client.set(self._instance(self.instance), b"1", ex=LEASE_SECONDS)
            except (RedisError, OSError) as exc:
                log.warning("could not renew this instance's run lease in Redis: %s", exc)

    async def aclose(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self._instance(self.instance))

    async def begin(self, record: RunRecord) -> None:
        reference = {"owner": record.owner, "conversation_id": record.conversation_id, "message_id": record.message_id}
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(
                self._run(record.run_id),
                mapping={
                    "owner": json.dumps(record.owner),
                    "conversation_id": record.conversation_id,
                    "message_id": record.message_id,
                    "instance": record.instance,
                    "state": "running",
                    "last_seq": 0,
                },
            )
            pipe.expire(self._run(record.run_id), _RUNNING_TTL_SECONDS)
            pipe.set(self._active(record.conversation_id), record.run_id, ex=_RUNNING_TTL_SECONDS)
            pipe.set(f"{self._prefix}:runref:{record.run_id}", json.dumps(reference), px=self._reference_ms)
            await pipe.execute()

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        """One round trip for a batch of events."""
        key = self._events(run_id)
        async with self._client.pipeline(transaction=False) as pipe:
            for seq, name, data in events:
                pipe.xadd(key, {b"n": name, b"d": data}, id=f"0-{seq}")
            if events[0][0] == 1:
                pipe.expire(key, _RUNNING_TTL_SECONDS)
            pipe.hset(self._run(run_id), "last_seq", events[-1][0])
            await pipe.execute()

    async def end(self, run_id: str, record: RunRecord, state: RunState, last_seq: int) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xadd(self._events(run_id), {b"n": b"", b"d": state.encode()}, id=_END_ID)
            pipe.hset(self._run(run_id), mapping={"state": state, "last_seq": last_seq})
            pipe.pexpire(self._events(run_id), self._keep_ms)
            pipe.pexpire(self._run(run_id), self._keep_ms)
            await pipe.execute()
        await self._delete_if_equal(keys=[self._active(record.conversation_id)], args=[run_id])

    async def record(self, run_id: str) -> RunRecord | None:
        fields = cast(dict[bytes, bytes], await self._client.hgetall(self._run(run_id)))
        if not fields:
            return None
        state = fields[b"state"].decode()
        instance = fields[b"instance"].decode()
        alive = state != "running" or bool(await self._client.exists(self._instance(instance)))
        return RunRecord(
            run_id=run_id,
            owner=json.loads(fields[b"owner"]),
            conversation_id=fields[b"conversation_id"].decode(),
            message_id=fields[b"message_id"].decode(),
            instance=instance,
            state=state,  # type: ignore[arg-type]
            last_seq=int(fields[b"last_seq"]),
            alive=alive,
        )

    async def reference(self, run_id: str) -> RunReference | None:
        stored = cast(bytes | None, await self._client.get(f"{self._prefix}:runref:{run_id}"))
        if stored is None:
            return None
        data = json.loads(stored)
        return RunReference(data["owner"], data["conversation_id"], data["message_id"])

    async def active_run(self, conversation_id: str) -> str | None:
        run_id = cast(bytes | None, await self._client.get(self._active(conversation_id)))
        return None if run_id is None else run_id.decode()

    async def read(self, run_id: str, after: int) -> AsyncIterator[list[LoggedEvent]]:
        """The events after `after`, then each new batch until the end entry; an empty list after
        a second of silence. A run whose instance died raises RunNotResumable (after its events)."""
        key, last = self._events(run_id), f"0-{max(after, 0)}".encode()
        while True:
            reply = cast(_XReadReply, await self._client.xread({key: last}, count=1000, block=_IDLE_MS))
            if reply:
                entries = reply[0][1]
                events: list[LoggedEvent] = []
                for entry_id, fields in entries:
                    if entry_id == _END_ID:
                        if events:
                            yield events
                        return
                    events.append((int(entry_id.split(b"-", 1)[1]), fields[b"n"], fields[b"d"]))
                last = entries[-1][0]
                yield events
                continue
            record = await self.record(run_id)
            if record is None or record.state != "running":  # expired while read, or ended (the end entry read)
                return
            if not record.alive:
                raise RunNotResumable(record)
            yield []
