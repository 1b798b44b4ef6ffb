"""`parley keys`: create, list, update and revoke API keys in the configured database.

Works on the database directly (no running server needed), with the same `--config` as
`parley serve`. With `redis_url` set, running servers are told of each change and drop the key
from their caches before the command returns.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from parley.config import ConfigError, Settings, load_settings
from parley.errors import ParleyError

app = typer.Typer(help="API keys: create, list, update, revoke.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="PARLEY_CONFIG", help="A parley.toml file.")
]
RpmOption = Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")]
StreamsOption = Annotated[int | None, typer.Option("--max-streams", min=1, help="Replies streaming at once.")]
DailyOption = Annotated[int | None, typer.Option("--daily-tokens", min=1, help="Tokens a day.")]
MonthlyOption = Annotated[int | None, typer.Option("--monthly-tokens", min=1, help="Tokens a month.")]
ModelsOption = Annotated[str | None, typer.Option("--models", help="Models it may use, a,b (default: all).")]
AgentsOption = Annotated[str | None, typer.Option("--agents", help="Agents it may use, x,y (default: all).")]
ExpiresOption = Annotated[str | None, typer.Option("--expires", help="Expiry from now: 30d, 12h, 90m.")]
_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _expiry(text: str) -> datetime:
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise typer.BadParameter("--expires takes a number and d, h or m, e.g. 30d")
    return datetime.now(UTC) + timedelta(**{_UNITS[match[2]]: int(match[1])})


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _limits(**given: int | None) -> dict[str, int | None]:
    return {name: value for name, value in given.items() if value is not None}


def _run(config: Path | None, work: Callable[[Any, Settings], Awaitable[T]]) -> T:
    """Open the configured database's keys (migrating it first, as a server would) and run `work`."""
    from parley.access.cli_support import with_key_store

    try:
        settings = load_settings(config)
        return asyncio.run(with_key_store(settings, work))
    except (ConfigError, ParleyError) as exc:
        message = exc.message if isinstance(exc, ParleyError) else str(exc)
        errors.print(f"[red]error:[/red] {message}", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name, shown in logs and metrics.")],
    config: ConfigOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_streams: StreamsOption = None,
    daily_tokens: DailyOption = None,
    monthly_tokens: MonthlyOption = None,
    models: ModelsOption = None,
    agents: AgentsOption = None,
    expires: ExpiresOption = None,
) -> None:
    """Create a key and print it (this once: only its hash is kept)."""
    from parley.access.key_store import KeySettings

    values: dict[str, Any] = {"name": name}
    limits = _limits(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_streams=max_streams,
        daily_tokens=daily_tokens,
        monthly_tokens=monthly_tokens,
    )
    if limits:
        values["limits"] = limits
    if models is not None:
        values["models"] = _names(models)
    if agents is not None:
        values["agents"] = _names(agents)
    if expires is not None:
        values["expires_at"] = _expiry(expires)

    async def work(access: Any, _: Settings) -> str:
        record, key = await access.keys.create(KeySettings(**values))
        await access.changed(record.id)
        return f"{record.id}\n{key}"

    key_id, key = _run(config, work).split("\n")
    errors.print(f"Created {key_id} ({name}). The key, shown this once:", highlight=False)
    print(key)


@app.command("list")
def list_keys(config: ConfigOption = None) -> None:
    """Every key: its id, name, prefix, status, limits and expiry (never the key)."""
    from parley.api.admin_keys import KeyOut

    async def work(access: Any, _: Settings) -> list[KeyOut]:
        return [KeyOut.of(record) for record in await access.keys.list()]

    table = Table("id", "name", "prefix", "status", "rpm", "tpm", "streams", "daily", "monthly", "models", "expires")
    for key in _run(config, work):
        table.add_row(
            key.id,
            key.name,
            key.prefix + "…",
            key.status,
            *(_shown(value) for value in (key.requests_per_minute, key.tokens_per_minute, key.max_streams)),
            *(_shown(value) for value in (key.daily_tokens, key.monthly_tokens)),
            "all" if key.models is None else ",".join(key.models),
            "never" if key.expires_at is None else key.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _shown(value: int | None) -> str:
    return "-" if value is None else str(value)


@app.command()
def revoke(key: Annotated[str, typer.Argument(help="The key's id or name.")], config: ConfigOption = None) -> None:
    """Revoke a key for good; servers refuse it at once."""

    async def work(access: Any, settings: Settings) -> str:
        record = await access.keys.revoke(key)
        await access.changed(record.id)
        return f"Revoked {record.id}." + _without_redis(settings)

    errors.print(_run(config, work), highlight=False)


def _without_redis(settings: Settings) -> str:
    """What a change means for running servers when none hears of it (no `redis_url`)."""
    if settings.redis_url is not None:
        return ""
    return f" Running servers use the change within {settings.key_cache_seconds:g} s (no redis_url to tell them)."


@app.command()
def update(
    key: Annotated[str, typer.Argument(help="The key's id or name.")],
    config: ConfigOption = None,
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_streams: StreamsOption = None,
    daily_tokens: DailyOption = None,
    monthly_tokens: MonthlyOption = None,
    models: ModelsOption = None,
    agents: AgentsOption = None,
    expires: ExpiresOption = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Never expire.")] = False,
) -> None:
    """Change a key's name, limits, allow-lists (`--models all` for all) or expiry."""
    from parley.access.key_store import KeySettings

    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = name
    limits = _limits(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_streams=max_streams,
        daily_tokens=daily_tokens,
        monthly_tokens=monthly_tokens,
    )
    if limits:
        values["limits"] = limits
    for field, given in (("models", models), ("agents", agents)):
        if given is not None:
            values[field] = None if given == "all" else _names(given)
    if expires is not None:
        values["expires_at"] = _expiry(expires)
    elif no_expiry:
        values["expires_at"] = None

    async def work(access: Any, settings: Settings) -> str:
        record = await access.keys.update(key, KeySettings(**values))
        await access.changed(record.id)
        return f"Updated {record.id}." + _without_redis(settings)

    errors.print(_run(config, work), highlight=False)


@app.command("admin-key")
def admin_key() -> None:
    """Print a new random admin key (for PARLEY_ADMIN_KEY); Parley keeps nothing of it."""
    print(secrets.token_urlsafe(32))
