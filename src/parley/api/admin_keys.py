"""`/api/admin/keys`: create, list, read, change and revoke API keys. The admin key only.

A key is shown once, in the answer to its creation; Parley keeps only its keyed hash. A change
or a revocation holds on every server sharing the database by the time the answer arrives (with
Redis; without it, within `key_cache_seconds`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from parley.access.key_store import KeyRecord, KeySettings
from parley.access.principal import principal_of
from parley.access.startup import AccessControl
from parley.api.input_limits import CheckedJSONRoute, Integer
from parley.config import Settings
from parley.errors import InvalidRequest, PermissionDenied

router = APIRouter(prefix="/api/admin/keys", tags=["Admin: API keys"], route_class=CheckedJSONRoute)

KeyName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.@-]*$")]
Limit = Annotated[Integer, Field(ge=1, le=10**15)]
ItemName = Annotated[str, Field(min_length=1, max_length=128)]
LIMITS = ("requests_per_minute", "tokens_per_minute", "max_streams", "daily_tokens", "monthly_tokens")


async def _access(request: Request) -> AccessControl:
    access: AccessControl | None = request.app.state.access
    if access is None or not principal_of(request).admin:
        raise PermissionDenied(
            "the admin API needs the admin key (the value of the variable `admin_key_env` names)",
            code="admin_key_required",
        )
    return access


AdminDep = Annotated[AccessControl, Depends(_access)]


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    max_streams: Limit | None = None
    daily_tokens: Limit | None = None
    monthly_tokens: Limit | None = None
    models: list[ItemName] | None = Field(default=None, max_length=256, description="null: every model.")
    agents: list[ItemName] | None = Field(default=None, max_length=256, description="null: every agent.")
    expires_at: AwareDatetime | None = Field(default=None, description="null: never.")

    def key_settings(self, name: str | None = None) -> KeySettings:
        chosen = self.model_fields_set
        values: dict[str, Any] = {
            field: getattr(self, field) for field in ("models", "agents", "expires_at") if field in chosen
        }
        limits = {field: getattr(self, field) for field in LIMITS if field in chosen}
        if limits:
            values["limits"] = limits
        if name is not None:
            values["name"] = name
        return KeySettings(**values)


class KeyCreate(KeyFields):
    name: KeyName


class KeyUpdate(KeyFields):
    """Only the fields sent change; `null` removes a limit, an allow-list or the expiry."""

    name: KeyName | None = None


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it by.")
    status: Literal["active", "revoked", "expired"]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_streams: int | None
    daily_tokens: int | None
    monthly_tokens: int | None
    models: list[str] | None
    agents: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, record: KeyRecord) -> KeyOut:
        status: Literal["active", "revoked", "expired"] = "active"
        if record.revoked_at is not None:
            status = "revoked"
        elif not record.usable(datetime.now(UTC)):
            status = "expired"
        return cls(
            id=record.id,
            name=record.name,
            prefix=record.prefix,
            status=status,
            **{field: getattr(record.limits, field) for field in LIMITS},
            models=None if record.models is None else list(record.models),
            agents=None if record.agents is None else list(record.agents),
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            created_at=record.created_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, never again.")


class KeyList(BaseModel):
    data: list[KeyOut]


def _check_names(request: Request, body: KeyFields) -> None:
    settings: Settings = request.app.state.settings
    for field, known in (("models", [m.name for m in settings.models]), ("agents", [a.name for a in settings.agents])):
        unknown = sorted(set(getattr(body, field) or ()) - set(known))
        if unknown:
            raise InvalidRequest(
                f"{field}: not configured: {', '.join(unknown)} (configured: {', '.join(known)})",
                param=field,
                code=f"unknown_{field}",
            )


@router.post("", status_code=201)
async def create_key(request: Request, body: KeyCreate, access: AdminDep) -> KeyCreated:
    """A new key, returned this once in `key`."""
    _check_names(request, body)
    record, key = await access.keys.create(body.key_settings(body.name))
    await access.changed(record.id)
    return KeyCreated(**KeyOut.of(record).model_dump(), key=key)


@router.get("")
async def list_keys(access: AdminDep) -> KeyList:
    """Every key, revoked and expired ones included (never a key itself)."""
    return KeyList(data=[KeyOut.of(record) for record in await access.keys.list()])


@router.get("/{key_id}")
async def get_key(key_id: str, access: AdminDep) -> KeyOut:
    """One key, by id or name."""
    return KeyOut.of(await access.keys.get(key_id))


@router.patch("/{key_id}")
async def update_key(request: Request, key_id: str, body: KeyUpdate, access: AdminDep) -> KeyOut:
    """Change a key's name, limits, allow-lists or expiry; servers use the change at once."""
    _check_names(request, body)
    record = await access.keys.update(key_id, body.key_settings(body.name))
    await access.changed(record.id)
    return KeyOut.of(record)


@router.delete("/{key_id}")
async def revoke_key(key_id: str, access: AdminDep) -> KeyOut:
    """Revoke a key for good: refused by every server from the moment this answers."""
    record = await access.keys.revoke(key_id)
    await access.changed(record.id)
    return KeyOut.of(record)
