"""The `api_keys` table, through SQLAlchemy Core on the store's engine."""

from __future__ import annotations

import contextlib
import hmac
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from parley.access.keys import KeyHasher, new_key, prefix_of
from parley.access.principal import KeyLimits, Principal
from parley.errors import KeyNameTaken, KeyNotFound
from parley.store.availability import as_unavailable
from parley.store.engine import writer
from parley.store.schema import ApiKeyRow

KEYS = cast(Table, ApiKeyRow.__table__)
LIMIT_FIELDS = tuple(field.name for field in fields(KeyLimits))
_UNSET: Any = object()


def new_key_id() -> str:
    return f"key_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as listed: everything but the key itself (which only its creator ever sees)."""

    id: str
    name: str
    prefix: str
    limits: KeyLimits
    models: tuple[str, ...] | None
    agents: tuple[str, ...] | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def principal(self) -> Principal:
        return Principal(
            key_id=self.id,
            alias=self.name,
            models=None if self.models is None else frozenset(self.models),
            agents=None if self.agents is None else frozenset(self.agents),
            limits=self.limits,
        )


@dataclass(frozen=True, slots=True)
class KeySettings:
    """What an administrator sets on a key; in an update, `_UNSET` fields are left as they are."""

    name: str = _UNSET
    limits: dict[str, int | None] = _UNSET  # only the limits named change
    models: Sequence[str] | None = _UNSET
    agents: Sequence[str] | None = _UNSET
    expires_at: datetime | None = _UNSET

    def values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.name is not _UNSET:
            values["name"] = self.name
        if self.limits is not _UNSET:
            values.update({name: value for name, value in self.limits.items() if name in LIMIT_FIELDS})
        for name in ("models", "agents"):
            chosen = getattr(self, name)
            if chosen is not _UNSET:
                values[name] = None if chosen is None else sorted(set(chosen))
        if self.expires_at is not _UNSET:
            values["expires_at"] = self.expires_at
        return values


class KeyStore:
    def __init__(self, engine: AsyncEngine, hasher: KeyHasher) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._hasher = hasher

    async def create(self, settings: KeySettings) -> tuple[KeyRecord, str]:
        """A new key: its record, and the key itself (shown once, never kept)."""
        key = new_key()
        values = {
            "id": new_key_id(),
            "prefix": prefix_of(key),
            "hash": self._hasher.digest(key),
            "created_at": datetime.now(UTC),
            **settings.values(),
        }
        try:
            async with _database(self._writer.begin()) as connection:
                await connection.execute(insert(KEYS).values(values))
        except IntegrityError as exc:
            raise _name_taken(values.get("name")) from exc
        return await self.get(values["id"]), key

    async def get(self, id_or_name: str) -> KeyRecord:
        query = select(KEYS).where(or_(KEYS.c.id == id_or_name, KEYS.c.name == id_or_name))
        async with _database(self._engine.connect()) as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            raise KeyNotFound(f"no API key {id_or_name!r}")
        return _record(row)

    async def list(self) -> list[KeyRecord]:
        async with _database(self._engine.connect()) as connection:
            rows = (await connection.execute(select(KEYS).order_by(KEYS.c.created_at, KEYS.c.id))).all()
        return [_record(row) for row in rows]

    async def update(self, id_or_name: str, settings: KeySettings) -> KeyRecord:
        record = await self.get(id_or_name)
        values = settings.values()
        if values:
            try:
                async with _database(self._writer.begin()) as connection:
                    await connection.execute(update(KEYS).where(KEYS.c.id == record.id).values(values))
            except IntegrityError as exc:
                raise _name_taken(values.get("name")) from exc
        return await self.get(record.id)

    async def revoke(self, id_or_name: str) -> KeyRecord:
        """Revoke a key for good (revoking it again changes nothing)."""
        record = await self.get(id_or_name)
        if record.revoked_at is None:
            async with _database(self._writer.begin()) as connection:
                await connection.execute(
                    update(KEYS)
                    .where(KEYS.c.id == record.id, KEYS.c.revoked_at.is_(None))
                    .values(revoked_at=datetime.now(UTC))
                )
        return await self.get(record.id)

    async def find(self, key: str) -> KeyRecord | None:
        """The record of the key `key`, revoked or expired ones included; None for no key of ours."""
        digest = self._hasher.digest(key)
        async with _database(self._engine.connect()) as connection:
            rows = (await connection.execute(select(KEYS).where(KEYS.c.prefix == prefix_of(key)))).all()
        for row in rows:
            if hmac.compare_digest(row.hash, digest):
                return _record(row)
        return None


async def count_usable_keys(engine: AsyncEngine) -> int:
    now = datetime.now(UTC)
    query = (
        select(func.count())
        .select_from(KEYS)
        .where(KEYS.c.revoked_at.is_(None), or_(KEYS.c.expires_at.is_(None), KEYS.c.expires_at > now))
    )
    async with _database(engine.connect()) as connection:
        return int((await connection.execute(query)).scalar_one())


@contextlib.asynccontextmanager
async def _database(connecting: AbstractAsyncContextManager[AsyncConnection]) -> AsyncIterator[AsyncConnection]:
    """A connection whose outage (unreachable, no schema) is the store's 503, not a 500."""
    try:
        async with connecting as connection:
            yield connection
    except Exception as exc:
        unavailable = as_unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def _name_taken(name: str | None) -> KeyNameTaken:
    return KeyNameTaken(f"an API key named {name!r} exists already (revoked keys keep their names)", param="name")


def _record(row: Row[Any]) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        limits=KeyLimits(**{name: getattr(row, name) for name in LIMIT_FIELDS}),
        models=None if row.models is None else tuple(row.models),
        agents=None if row.agents is None else tuple(row.agents),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )
