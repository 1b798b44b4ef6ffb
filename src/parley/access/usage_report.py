"""The usage report: the usage table summed over a range of days, grouped one way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from parley.access.usage import USAGE
from parley.store.availability import as_unavailable

GroupBy = Literal["key", "model", "user", "day"]

_GROUP_COLUMNS = {"key": USAGE.c.key_id, "model": USAGE.c.model, "user": USAGE.c.end_user, "day": USAGE.c.day}


@dataclass(frozen=True, slots=True)
class UsageLine:
    group: str  # the key id, model, end user or day ("" for calls with no key or no end user)
    key_alias: str | None  # when grouped by key: its name
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    cost: float

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "key_alias": self.key_alias,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "errors": self.errors,
            "cost": round(self.cost, 6),
        }


async def usage_report(
    engine: AsyncEngine, first: date, last: date, group_by: GroupBy, *, key_id: str | None = None
) -> list[UsageLine]:
    """Usage from `first` to `last` (UTC days, both included); only `key_id`'s when given."""
    group = _GROUP_COLUMNS[group_by]
    alias = func.max(USAGE.c.key_alias) if group_by == "key" else None
    query = (
        select(
            group,
            func.sum(USAGE.c.requests),
            func.sum(USAGE.c.prompt_tokens),
            func.sum(USAGE.c.completion_tokens),
            func.sum(USAGE.c.errors),
            func.sum(USAGE.c.cost),
            *((alias,) if alias is not None else ()),
        )
        .where(USAGE.c.day >= first, USAGE.c.day <= last)
        .group_by(group)
        .order_by(group)
    )
    if key_id is not None:
        query = query.where(USAGE.c.key_id == key_id)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).all()
    except Exception as exc:  # a database that can't serve now: 503, as on the other stored routes
        if (unavailable := as_unavailable(exc)) is not None:
            raise unavailable from exc
        raise
    return [
        UsageLine(
            group=str(row[0]),
            key_alias=row[6] if alias is not None else None,
            requests=int(row[1]),
            prompt_tokens=int(row[2]),
            completion_tokens=int(row[3]),
            errors=int(row[4]),
            cost=float(row[5]),
        )
        for row in rows
    ]
