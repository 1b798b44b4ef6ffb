"""One writer per store: the writes of concurrent turns, grouped into few transactions.

Every write on a conversation turn's path (a turn opened, a reply's progress, a reply finished)
is a `WriteOp` put on a bounded queue. One task takes whatever is queued (up to `max_batch`)
and applies it in one transaction: ops of a kind together, most as one executemany. While
that transaction commits, the next turns' ops queue up and go together in the next one, so
the number of commits follows the load's concurrency, not its size, and no op waits for a
timer. An op's caller resumes once its transaction has committed: whoever acknowledges a
write to a client (a `message_start`, a `message_complete`) has it in the database.

A full queue makes `submit` wait (backpressure) rather than drop a write. If a batch fails, its
ops are retried one by one, so one bad op fails alone. `aclose` applies everything queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("parley.store.writer")

T = TypeVar("T")
Op = TypeVar("Op", bound="WriteOp[Any]")

MAX_BATCH = 256
MAX_QUEUE = 4096


class WriteOp(Generic[T]):
    """A write of one kind; the ops of a kind in a batch are applied together by `apply_all`."""

    order: ClassVar[int] = 0  # kinds apply in this order within a transaction

    @classmethod
    async def apply_all(cls: type[Op], connection: AsyncConnection, ops: Sequence[Op]) -> Sequence[T]:
        """Apply `ops` (all of this class) in the open transaction; their results, in order."""
        raise NotImplementedError


Transaction = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection]]
Kinds = Sequence[tuple[type[WriteOp[Any]], Sequence[WriteOp[Any]]]]


class DirectApplier(Protocol):
    """Applies the kinds it `handles` through the database driver itself, skipping SQLAlchemy:
    the turn path's few statements, where the per-statement cost of the general path shows."""

    def handles(self, kind: type[WriteOp[Any]]) -> bool: ...

    async def apply(self, kinds: Kinds) -> list[Sequence[Any]]:
        """Apply each kind's ops (kinds in `order`) in one transaction; each kind's results, in order."""
        ...

    async def aclose(self) -> None: ...


class BatchWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        transaction: Transaction | None = None,
        max_batch: int = MAX_BATCH,
        max_queue: int = MAX_QUEUE,
        direct: DirectApplier | None = None,
    ) -> None:
        self._transaction = transaction or engine.begin
        self._direct = direct
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[WriteOp[Any], asyncio.Future[Any]] | None] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        # Told of each committed batch: (writes in it, seconds its transaction took).
        self.observe: Callable[[int, float], None] | None = None

    async def submit(self, op: WriteOp[T]) -> T:
        """Queue `op` and return its result once its transaction has committed."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="parley-store-writer")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((op, future))
        # Shielded: a caller cancelled while its write is queued leaves the write to finish (it
        # may already be on its way to the database); the caller just doesn't wait for it.
        return await asyncio.shield(future)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def aclose(self) -> None:
        """Apply everything queued, then stop (and close the direct applier's connection)."""
        try:
            if self._task is not None:
                await self._queue.put(None)
                await self._task
                self._task = None
        finally:
            if self._direct is not None:
                await self._direct.aclose()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            batch: list[tuple[WriteOp[Any], asyncio.Future[Any]]] = []
            stopping = item is None
            if item is not None:
                batch.append(item)
            while len(batch) < self._max_batch and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            if batch:
                await self._apply(batch)
            if stopping and self._queue.empty():
                return

    async def _apply(self, batch: list[tuple[WriteOp[Any], asyncio.Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._in_one_transaction([op for op, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exception=exc)
                return
            log.info("a batch of %d writes failed (%s); applying them one by one", len(batch), type(exc).__name__)
            for item in batch:
                await self._apply([item])
            return
        if self.observe is not None:
            self.observe(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def _in_one_transaction(self, ops: list[WriteOp[Any]]) -> list[Any]:
        kinds: dict[type[WriteOp[Any]], list[int]] = {}
        for index, op in enumerate(ops):
            kinds.setdefault(type(op), []).append(index)
        ordered = sorted(kinds, key=lambda kind: kind.order)
        grouped = [(kind, [ops[index] for index in kinds[kind]]) for kind in ordered]
        if self._direct is not None and all(self._direct.handles(kind) for kind in ordered):
            applied_all = await self._direct.apply(grouped)
        else:
            applied_all = []
            async with self._transaction() as connection:
                for kind, of_kind in grouped:
                    applied_all.append(await kind.apply_all(connection, of_kind))
        results: list[Any] = [None] * len(ops)
        for kind, applied in zip(ordered, applied_all, strict=True):
            for index, result in zip(kinds[kind], applied, strict=True):
                results[index] = result
        return results


def _settle(future: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


@contextlib.asynccontextmanager
async def locked(lock: asyncio.Lock, begin: Transaction) -> AsyncIterator[AsyncConnection]:
    """A transaction taken in turn with this server's other writers (SQLite has one at a time)."""
    async with lock, begin() as connection:
        yield connection
