"""Usage records: every reply's requests, tokens, errors and cost, per UTC day, key, end user and model.

A gate hears of every generation (the OpenAI API and stateless routes as much as stored
conversations). A reply that ends adds to a tally in memory; about once a second the tally goes
to the database as one batched upsert through the store's writer, with the turns' own writes:
the request path costs a dictionary update, and a crash loses at most that second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.access.principal import Principal
from parley.chat.run import Run
from parley.config import ModelConfig
from parley.models.base import ChatRequest
from parley.models.registry import ModelEntry
from parley.store import ConversationStore
from parley.store.schema import UsageRow
from parley.store.writer import WriteOp

log = logging.getLogger("parley.access.usage")

USAGE = cast(Table, UsageRow.__table__)
FLUSH_SECONDS = 1.0
Prices = dict[str, tuple[float, float]]  # model -> (per prompt token, per completion token)
TallyKey = tuple[date, str, str, str]  # day, key id, end user, model ('' where there is none)


@dataclass(slots=True)
class _Tally:
    key_alias: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost: float = 0.0


def prices_of(models: Iterable[ModelConfig]) -> Prices:
    return {
        model.name: (model.price.prompt_per_million / 1e6, model.price.completion_per_million / 1e6)
        for model in models
        if model.price is not None
    }


class UsageRecorder:
    """A gate that lets every generation in and counts what it used when it ends."""

    def __init__(self, store: ConversationStore, prices: Prices, *, flush_seconds: float = FLUSH_SECONDS) -> None:
        self._store = store
        self._prices = prices
        self._flush_seconds = flush_seconds
        self._tally: dict[TallyKey, _Tally] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> _Counted:
        return _Counted(self, principal)

    def count(self, principal: Principal, run: Run) -> None:
        key = (datetime.now(UTC).date(), principal.key_id or "", principal.end_user or "", run.model)
        tally = self._tally.get(key)
        if tally is None:
            tally = self._tally[key] = _Tally(principal.alias)
        tally.requests += 1
        if run.outcome == "failed":
            tally.errors += 1
        if run.usage is not None:
            tally.prompt_tokens += run.usage.prompt_tokens
            tally.completion_tokens += run.usage.completion_tokens
            prompt_price, completion_price = self._prices.get(run.model, (0.0, 0.0))
            tally.cost += run.usage.prompt_tokens * prompt_price + run.usage.completion_tokens * completion_price
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon(), name="parley-usage")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self._flush_seconds)  # (gathers a second's replies into one write)
        self._flushing = None
        await self.flush()

    async def flush(self) -> None:
        """Write what has been counted and not yet written."""
        tally, self._tally = self._tally, {}
        if not tally:
            return
        try:
            await self._store.write(RecordUsage(tuple(tally.items())))
        except Exception:
            log.exception("could not record the usage of %d replies", sum(t.requests for t in tally.values()))

    async def aclose(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
            self._flushing = None
        await self.flush()


class _Counted:
    __slots__ = ("_principal", "_recorder")

    def __init__(self, recorder: UsageRecorder, principal: Principal) -> None:
        self._recorder = recorder
        self._principal = principal

    def attach(self, run: Run) -> None:
        run.on_end(self._count)

    async def _count(self, run: Run) -> None:
        self._recorder.count(self._principal, run)

    async def release(self) -> None:
        return None  # never began: nothing used


@dataclass(frozen=True, slots=True)
class RecordUsage(WriteOp[None]):
    """Tallies added to their rows (made if new), in one multi-row upsert per batch."""

    order: ClassVar[int] = 3
    tallies: tuple[tuple[TallyKey, _Tally], ...]

    @classmethod
    async def apply_all(cls, connection: AsyncConnection, ops: Sequence[RecordUsage]) -> Sequence[None]:
        rows: dict[TallyKey, dict[str, Any]] = {}
        for op in ops:
            for key, tally in op.tallies:
                row = rows.get(key)
                if row is None:
                    day, key_id, end_user, model = key
                    rows[key] = {
                        "day": day,
                        "key_id": key_id,
                        "end_user": end_user,
                        "model": model,
                        "key_alias": tally.key_alias,
                        "requests": tally.requests,
                        "prompt_tokens": tally.prompt_tokens,
                        "completion_tokens": tally.completion_tokens,
                        "errors": tally.errors,
                        "cost": tally.cost,
                    }
                else:
                    for column in _ADDED:
                        row[column] += getattr(tally, column)
        # In key order: instances upserting the same rows at once never deadlock on each other.
        await connection.execute(_UPSERTS[connection.dialect.name], [rows[key] for key in sorted(rows)])
        return [None] * len(ops)


_ADDED = ("requests", "prompt_tokens", "completion_tokens", "errors", "cost")


def _upsert(insert: Any) -> Any:
    statement = insert(USAGE)
    current, new = USAGE.c, statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[current.day, current.key_id, current.end_user, current.model],
        set_={"key_alias": new.key_alias} | {column: current[column] + new[column] for column in _ADDED},
    )


_UPSERTS = {"postgresql": _upsert(postgresql.insert), "sqlite": _upsert(sqlite.insert)}
