"""`GET /api/usage`: what was used, per key, model, end user or day. A key sees its own usage only."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request

from parley.access.principal import principal_of
from parley.access.usage import UsageRecorder
from parley.access.usage_report import GroupBy, usage_report
from parley.errors import InvalidRequest

router = APIRouter(prefix="/api", tags=["Usage"])

MAX_DAYS = 366


# A day as `YYYY-MM-DD` only: pydantic's lax dates would also take `0` (1970-01-01) or a timestamp.
Day = Annotated[str, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")]


def _day(text: str | None, param: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"`{param}` is not a day of the calendar: {text}", param=f"query.{param}", code="invalid_value"
        ) from None


@router.get(
    "/usage",
    responses={400: {"description": "A day that doesn't exist, `from` after `to`, or more than 366 days."}},
)
async def usage(
    request: Request,
    first_day: Annotated[
        Day | None, Query(alias="from", description="First UTC day, YYYY-MM-DD (default: this month's first).")
    ] = None,
    last_day: Annotated[Day | None, Query(alias="to", description="Last UTC day, included (default: today).")] = None,
    group_by: Annotated[GroupBy, Query(description="key, model, user or day.")] = "day",
) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    last = _day(last_day, "to") or today
    first = _day(first_day, "from") or last.replace(day=1)
    if first > last:
        raise InvalidRequest("`from` must not be after `to`", param="from", code="invalid_range")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequest(f"a report covers at most {MAX_DAYS} days", param="from", code="invalid_range")
    principal = principal_of(request)
    # The admin key and callers of an open server see everyone's usage; a key sees its own.
    own = principal.key_id if principal.key_id is not None and not principal.admin else None
    recorder: UsageRecorder | None = getattr(request.app.state, "usage", None)
    if recorder is not None:
        await recorder.flush()  # this instance's last second too (others write theirs within a second)
    lines = await usage_report(request.app.state.store.engine, first, last, group_by, key_id=own)
    return {
        "object": "usage_report",
        "from": first.isoformat(),
        "to": last.isoformat(),
        "group_by": group_by,
        "data": [line.to_json() for line in lines],
    }
