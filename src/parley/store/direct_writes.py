"""The store writer's direct applier for an engine's database (`writer.DirectApplier`)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from parley.store.postgres_writes import PostgresApplier
from parley.store.sqlite_writes import SqliteApplier
from parley.store.urls import sqlite_path
from parley.store.writer import DirectApplier


def direct_applier(engine: AsyncEngine, lock: asyncio.Lock | None) -> DirectApplier | None:
    """SQLite (a file: an in-memory database has only the engine's connection) or PostgreSQL;
    None leaves every write to SQLAlchemy."""
    if engine.dialect.name == "postgresql":
        return PostgresApplier(engine)
    path = sqlite_path(engine.url)
    if engine.dialect.name == "sqlite" and path is not None and lock is not None:
        return SqliteApplier(path, lock)
    return None
