"""Run logs in Redis Streams, so that any instance can replay a run and follow it live.

Keys (under the configured prefix `P`):
- `P:run:R:events`, a stream of the run's events: one entry per model batch, with id `0-LAST`
  (the last event's seq, so "after N" starts at the stream id `0-N`) holding its first seq and
  the events packed (`name json` lines); and one `1-0` entry when the run ended: a reader stops there.
- `P:run:R`, a hash: owner, conversation, message, instance, state, last_seq.
- `P:runref:R`, where the reply is stored, kept `reference_seconds` (a later resume answers 410).
- `P:conv:C:active`, the run in progress in conversation C.
- `P:instance:I`, the lease of a live instance, refreshed while it runs: a running run whose
  instance's lease is gone is not resumable (its instance died; nothing generates it again).
Appends don't wait for Redis: every run's pending writes go out together in one script call, the
next one as soon as the previous answered, so at 64 streams a round trip carries many batches.
Running runs' keys expire after a day at most; ended ones `keep_seconds` after they ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from parley.runs.memory_log import NamedBytes
from parley.runs.records import LoggedEvent, RunNotResumable, RunRecord, RunReference, RunState

log = logging.getLogger("parley.runs")

LEASE_SECONDS = 6
_LEASE_REFRESH_SECONDS = 2.0
_RUNNING_TTL_SECONDS = 86_400  # a running run's keys, should its instance never end it
_IDLE_MS = 1000
_COALESCE_SECONDS = 0.002
_END_ID = b"1-0"  # the end entry's id: after every event's (`0-SEQ`)
_XReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
# Everything queued since the last call, in one script call: at 64 streams, a command per run's
# batch (and four or five per begin and end) was most of what keeping a log in Redis cost, on
# both sides. ARGV: prefix, seconds a running run's keys live, ms a reference is kept, ms an ended
# run is kept, this instance; then operations, in order, each a tag and its values:
#   b run owner(JSON) conversation message reference(JSON)     a run began
#   a run first_seq last_seq packed                            its events (expire set with the first)
#   e run conversation state last_seq                          it ended (the end entry, `1-0`)
# Keys are made in the script from the prefix (as the limits' scripts do): one Redis, not a cluster.
# An operation that fails (pcall) doesn't stop the others; the script answers how many failed.
_WRITE = """
local p, ttl, ref_ms, keep_ms, instance = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local failed, i = 0, 6
local function call(...)
  local ok = redis.pcall(...)
  if type(ok) == 'table' and ok.err then failed = failed + 1 end
  return ok
end
while i <= #ARGV do
  local op, run = ARGV[i], ARGV[i + 1]
  local events = p .. ':run:' .. run .. ':events'
  if op == 'a' then
    call('XADD', events, '0-' .. ARGV[i + 3], 'f', ARGV[i + 2], 'e', ARGV[i + 4])
    if ARGV[i + 2] == '1' then call('EXPIRE', events, ttl) end
    i = i + 5
  elseif op == 'b' then
    local hash = p .. ':run:' .. run
    call('HSET', hash, 'owner', ARGV[i + 2], 'conversation_id', ARGV[i + 3], 'message_id', ARGV[i + 4],
      'instance', instance, 'state', 'running', 'last_seq', 0)
    call('EXPIRE', hash, ttl)
    call('SET', p .. ':conv:' .. ARGV[i + 3] .. ':active', run, 'EX', ttl)
    call('SET', p .. ':runref:' .. run, ARGV[i + 5], 'PX', ref_ms)
    i = i + 6
  else
    local hash, active = p .. ':run:' .. run, p .. ':conv:' .. ARGV[i + 2] .. ':active'
    call('XADD', events, '1-0', 'f', 0, 'e', ARGV[i + 3])
    call('HSET', hash, 'state', ARGV[i + 3], 'last_seq', ARGV[i + 4])
    call('PEXPIRE', events, keep_ms)
    call('PEXPIRE', hash, keep_ms)
    if redis.call('GET', active) == run then redis.call('DEL', active) end
    i = i + 5
  end
end
return failed
"""


@dataclass(frozen=True, slots=True)
class _Begin:
    record: RunRecord

    @property
    def run_id(self) -> str:
        return self.record.run_id


@dataclass(frozen=True, slots=True)
class _Append:
    run_id: str
    first_seq: int
    events: Sequence[NamedBytes]


@dataclass(frozen=True, slots=True)
class _End:
    record: RunRecord
    state: RunState
    last_seq: int

    @property
    def run_id(self) -> str:
        return self.record.run_id


_Write = _Begin | _Append | _End


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
        self._pending: list[_Write] = []
        self._flushing: asyncio.Task[None] | None = None
        self._pending_done: asyncio.Future[None] | None = None
        self._write = client.register_script(_WRITE)  # an EVALSHA (loaded again if Redis lost it)

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
        await self._written()
        if self._lease is not None:
            self._lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self._instance(self.instance))

    async def begin(self, record: RunRecord) -> None:
        """Write the run's record with the next script call, and wait for it: once its client learns the
        run's id, every instance knows the run."""
        await asyncio.shield(self._queue(_Begin(record)))

    def append(self, run_id: str, first_seq: int, events: Sequence[NamedBytes]) -> None:
        self._queue(_Append(run_id, first_seq, events))

    def end(self, record: RunRecord, state: RunState, last_seq: int) -> None:
        self._queue(_End(record, state, last_seq))

    def _queue(self, write: _Write) -> asyncio.Future[None]:
        """Queue a write for the next script call (started now if none is under way); the future of that
        call's end."""
        loop = asyncio.get_running_loop()
        self._pending.append(write)
        if self._pending_done is None:
            self._pending_done = loop.create_future()
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush(), name="parley-run-log-writes")
        return self._pending_done

    async def _flush(self) -> None:
        try:
            while self._pending:
                # Writes queued meanwhile join this call: under load, a run's batches of the
                # last few milliseconds become one stream entry (a resume waits that much longer).
                await asyncio.sleep(_COALESCE_SECONDS)
                pending, self._pending = self._pending, []
                done, self._pending_done = self._pending_done, None
                try:
                    failed = await self._write(args=self._script_args(pending))
                    if failed:
                        log.error("%d writes of run logs were refused by Redis", failed)
                except (RedisError, OSError) as exc:
                    runs = sorted({write.run_id for write in pending})
                    log.error("the logs of runs %s could not be written to Redis: %s", ", ".join(runs), exc)
                    if done is not None and not done.done():
                        done.set_exception(exc)
                        done.exception()  # (retrieved: a write nobody waits for failing is logged above)
                if done is not None and not done.done():
                    done.set_result(None)
        finally:
            self._flushing = None

    def _script_args(self, pending: list[_Write]) -> list[bytes | str | int]:
        """The write script's arguments for everything queued: a run's batches merged into one stream
        entry, each run's writes in order (its begin, its events, its end)."""
        args: list[bytes | str | int] = [
            self._prefix,
            _RUNNING_TTL_SECONDS,
            self._reference_ms,
            self._keep_ms,
            self.instance,
        ]
        batches: dict[str, tuple[int, list[NamedBytes]]] = {}  # a run's first seq here, and its events
        for write in pending:
            if isinstance(write, _Append):
                batches.setdefault(write.run_id, (write.first_seq, []))[1].extend(write.events)
            elif isinstance(write, _Begin):
                args += _begin_args(write.record)
            else:
                merged = batches.pop(write.run_id, None)
                if merged is not None:
                    args += _append_args(write.run_id, *merged)
                args += (b"e", write.run_id, write.record.conversation_id, write.state, write.last_seq)
        for run_id, merged in batches.items():
            args += _append_args(run_id, *merged)
        return args

    async def _written(self) -> None:
        """Wait until every queued write has gone out (or failed)."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def record(self, run_id: str) -> RunRecord | None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._run(run_id))
            pipe.xrevrange(self._events(run_id), count=1)
            found, newest = cast(tuple[dict[bytes, bytes], list[tuple[bytes, object]]], await pipe.execute())
        if not found:
            return None
        fields = dict(found)
        if newest and newest[0][0] != _END_ID:  # running: its newest entry's id is its last seq
            fields[b"last_seq"] = newest[0][0].split(b"-", 1)[1]
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
        after = max(after, 0)
        key, last = self._events(run_id), f"0-{after}".encode()
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
                    seq = int(fields[b"f"])
                    for line in fields[b"e"].split(b"\n"):
                        if seq > after:
                            name, _, data = line.partition(b" ")
                            events.append((seq, name, data))
                        seq += 1
                last = entries[-1][0]
                yield events
                continue
            record = await self.record(run_id)
            if record is None or record.state != "running":  # expired while read, or ended (the end entry read)
                return
            if not record.alive:
                raise RunNotResumable(record)
            yield []


def _append_args(run_id: str, first_seq: int, events: list[NamedBytes]) -> tuple[bytes | str | int, ...]:
    packed = b"\n".join([b"%s %s" % event for event in events])
    return b"a", run_id, first_seq, first_seq + len(events) - 1, packed


def _begin_args(record: RunRecord) -> tuple[bytes | str | int, ...]:
    owner, conversation, message = record.owner, record.conversation_id, record.message_id
    reference = json.dumps({"owner": owner, "conversation_id": conversation, "message_id": message})
    return b"b", record.run_id, json.dumps(owner), conversation, message, reference
