"""Store pieces that need no server: database URLs, titles, and SQLite's settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from parley.store import DatabaseURLError, async_url, default_database_url, open_store, title_from


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
        ("postgres://u:secret@db/parley", "postgresql+asyncpg://u:secret@db/parley"),
        ("postgresql+psycopg2://u@db/parley", "postgresql+asyncpg://u@db/parley"),
        ("postgresql://u@db/parley?sslmode=require", "postgresql+asyncpg://u@db/parley?ssl=require"),
        ("sqlite:///relative/parley.db", "sqlite+aiosqlite:///relative/parley.db"),
        ("sqlite:////var/lib/parley/parley.db", "sqlite+aiosqlite:////var/lib/parley/parley.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_user_style_urls_get_the_async_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("url", ["mysql://u@db/parley", "redis://localhost", "not a url"])
def test_databases_parley_cannot_use_are_refused_without_showing_passwords(url: str) -> None:
    with pytest.raises(DatabaseURLError) as raised:
        async_url(url.replace("u@", "u:hunter2@"))
    assert "hunter2" not in str(raised.value)


def test_the_default_database_is_a_file_in_the_data_directory(tmp_path: Path) -> None:
    url = default_database_url(tmp_path / "data")
    assert url == f"sqlite:///{tmp_path / 'data' / 'parley.db'}"
    assert async_url(url).database == str(tmp_path / "data" / "parley.db")


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("Hello", "Hello"),
        ("  What is\n\tthe   capital of France?  ", "What is the capital of France?"),
        ("x" * 60, "x" * 60),
        ("word " * 30, ("word " * 11).strip() + "…"),
        ("y" * 100, "y" * 59 + "…"),  # no space to cut at: cut mid-word
        ("a" * 50 + ", " + "b" * 20, "a" * 50 + "…"),  # no dangling comma
        ("   \n ", None),
    ],
)
def test_titles_come_from_the_first_message_trimmed(message: str, title: str | None) -> None:
    assert title_from(message) == title


async def test_sqlite_runs_in_wal_mode_with_foreign_keys_enforced(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "parley.db"  # directories are created
    store = await open_store(f"sqlite:///{path}")
    try:
        async with store.engine.connect() as connection:
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(text("PRAGMA foreign_keys")) == 1
        with pytest.raises(IntegrityError):
            async with store.engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO messages (id, conversation_id, position, role, content, status, created_at)"
                        " VALUES ('m', 'conv_nowhere', 0, 'user', 'x', 'complete', '2024-01-01 00:00:00')"
                    )
                )
    finally:
        await store.aclose()
    assert path.is_file()
