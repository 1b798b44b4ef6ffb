"""`parley usage`: a running server's usage report, as a table."""

from __future__ import annotations

import os
from datetime import date
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer()
console = Console()
errors = Console(stderr=True)

GROUPS = ("key", "model", "user", "day")


@app.callback(invoke_without_command=True)
def usage(
    url: Annotated[str, typer.Option("--url", envvar="PARLEY_URL", help="A running Parley server.")] = (
        "http://127.0.0.1:8000"
    ),
    first: Annotated[
        str | None, typer.Option("--from", help="First UTC day, YYYY-MM-DD (default: this month's first).")
    ] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last UTC day, included (default: today).")] = None,
    group_by: Annotated[str, typer.Option("--group-by", help="key, model, user or day.")] = "day",
) -> None:
    """Requests, tokens, errors and cost, grouped by key, model, end user or day.

    Sends the key in PARLEY_API_KEY, if set: a key sees its own usage, the admin key everyone's."""
    if group_by not in GROUPS:
        _fail(f"--group-by must be one of {', '.join(GROUPS)}")
    params = {"group_by": group_by}
    for name, value in (("from", first), ("to", last)):
        if value is not None:
            try:
                params[name] = date.fromisoformat(value).isoformat()
            except ValueError:
                _fail(f"--{name} must be a day as YYYY-MM-DD, not {value!r}")
    key = os.environ.get("PARLEY_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.get(f"{url}/api/usage", params=params, headers=headers, timeout=30)
    except httpx.TransportError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if reply.status_code != 200:
        _fail(_error_message(reply))
    console.print(_table(reply.json()))


def _table(report: dict[str, Any]) -> Table:
    group_by = report["group_by"]
    table = Table(title=f"Usage {report['from']} to {report['to']}", title_justify="left")
    table.add_column({"user": "end user"}.get(group_by, group_by))
    if group_by == "key":
        table.add_column("name")
    for column in ("requests", "prompt tokens", "completion tokens", "errors", "cost"):
        table.add_column(column, justify="right")
    totals = [0, 0, 0, 0, 0.0]
    for line in report["data"]:
        values = [line["requests"], line["prompt_tokens"], line["completion_tokens"], line["errors"], line["cost"]]
        totals = [total + value for total, value in zip(totals, values, strict=True)]
        names = [line["group"] or "(none)"] + ([line["key_alias"] or ""] if group_by == "key" else [])
        table.add_row(*names, *_cells(values))
    if report["data"]:
        table.add_section()
        table.add_row("total", *([""] if group_by == "key" else []), *_cells(totals))
    return table


def _cells(values: list[Any]) -> list[str]:
    *counts, cost = values
    return [f"{count:,}" for count in counts] + [f"{cost:.4f}"]


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}: {reply.text[:200]}"


def _fail(message: str) -> Any:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)
