"""Alembic environment. `parley.store.migrator` hands it an open connection inside a transaction.

Run by the `alembic` command instead (to write a new revision with `--autogenerate`), it connects
to `sqlalchemy.url` from the config, or else to PARLEY_DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection

from parley.store.engine import create_engine, writer
from parley.store.migrator import VERSION_TABLE
from parley.store.schema import Base
from parley.store.urls import async_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("PARLEY_DATABASE_URL")
    if not url:
        raise RuntimeError("set sqlalchemy.url in alembic's config, or PARLEY_DATABASE_URL")
    return url


async def _run_online() -> None:
    engine = create_engine(_url())
    try:
        async with writer(engine).begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=async_url(_url()), target_metadata=Base.metadata, version_table=VERSION_TABLE, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if isinstance(given, Connection):
    _run(given)
elif context.is_offline_mode():
    _run_offline()
else:
    asyncio.run(_run_online())
