"""Database URLs as users write them, turned into the async drivers Parley runs on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from parley.store.errors import DatabaseURLError

_POSTGRES = {"postgres", "postgresql"}
# libpq spells it `sslmode`; asyncpg takes the same values as `ssl`.
_LIBPQ_TO_ASYNCPG = {"sslmode": "ssl"}


def default_database_url(data_dir: Path) -> str:
    """The database used when none is configured: a SQLite file in the data directory."""
    return f"sqlite:///{(data_dir / 'parley.db').resolve()}"


def async_url(url: str | URL) -> URL:
    """`postgresql://…` → asyncpg, `sqlite:///path` → aiosqlite; any other database is refused.

    A driver already named (`postgresql+psycopg://`) is replaced: Parley only runs async drivers.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise DatabaseURLError(f"not a database URL: {_redacted(url)}") from exc
    backend = parsed.get_backend_name()
    if backend in _POSTGRES:
        query = {_LIBPQ_TO_ASYNCPG.get(key, key): value for key, value in parsed.query.items()}
        return parsed.set(drivername="postgresql+asyncpg", query=query)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    raise DatabaseURLError(
        f"unsupported database {backend!r} in {_redacted(url)}: use sqlite:///path/to/file.db or postgresql://…"
    )


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL (None for in-memory databases)."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _redacted(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"
