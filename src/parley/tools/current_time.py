"""`current_time`: the date and time now, in a time zone the model names."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from parley.tools.base import Tool, ToolFailed, ToolSpec


class CurrentTime(Tool):
    spec = ToolSpec(
        name="current_time",
        description="The current date, time and weekday, in a time zone (IANA name such as Europe/Paris; default UTC).",
        parameters={
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "an IANA time zone name, e.g. Asia/Karachi"}},
        },
    )

    async def run(self, arguments: dict[str, Any]) -> str:
        name = str(arguments.get("timezone") or "UTC")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolFailed(f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from None
        now = datetime.now(UTC).astimezone(zone)
        return f"{now.isoformat(timespec='seconds')} ({now:%A}, {name})"
