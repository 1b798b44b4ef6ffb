"""Whether a server requires keys, and the configurations it refuses to start with.

`auth = "auto"` requires keys once an admin key is set or any usable key exists at start-up;
a server that requires none serves only a loopback address unless `allow_open` says so. When
keys are required, the admin key must be set and not guessable.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from parley.access.authenticator import Authenticator
from parley.access.invalidation import KeyChangeListener
from parley.access.key_store import KeyStore, count_usable_keys
from parley.access.keys import KeyHasher, KeySecretError, load_key_secret
from parley.config import ConfigError, Settings

MIN_ADMIN_KEY_CHARS = 24
# Values people paste from examples; refused whatever their length.
PLACEHOLDER_ADMIN_KEYS = frozenset(
    {
        "admin",
        "administrator",
        "changeme",
        "change-me",
        "change_me",
        "password",
        "secret",
        "sk-1234",
        "sk-admin",
        "test",
        "parley",
        "your-admin-key",
        "your_admin_key",
        "your-secret-key",
        "changethis",
        "12345678901234567890123456789012",
    }
)
_MAKE_ONE = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


class AccessRefused(ConfigError):
    """The server must not start with this access configuration; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AccessPlan:
    required: bool
    admin_key: str | None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_key_problem(value: str | None, env_name: str) -> str | None:
    """Why `value` can't be the admin key; None when it can."""
    if value is None:
        return f"{env_name} is not set"
    if value.lower() in PLACEHOLDER_ADMIN_KEYS or len(set(value)) < 4:
        return f"{env_name} holds a well-known placeholder"
    if len(value) < MIN_ADMIN_KEY_CHARS:
        return f"{env_name} is shorter than {MIN_ADMIN_KEY_CHARS} characters"
    return None


async def plan_access(settings: Settings, engine: AsyncEngine) -> AccessPlan:
    """Decide whether keys are required, or raise AccessRefused saying how to fix the configuration."""
    admin_key = os.environ.get(settings.admin_key_env, "").strip() or None
    if settings.auth == "off":
        required = False
    elif settings.auth == "required" or admin_key is not None:
        required = True
    else:
        required = await count_usable_keys(engine) > 0
    if required:
        problem = admin_key_problem(admin_key, settings.admin_key_env)
        if problem is not None:
            raise AccessRefused(
                f"API keys are required (auth = {settings.auth!r}), but {problem}. Set it to a random value of "
                f"at least {MIN_ADMIN_KEY_CHARS} characters, e.g. `export {settings.admin_key_env}=$(parley keys "
                f"admin-key)` or {_MAKE_ONE}; it reaches the admin API (/api/admin/keys)."
            )
    elif not is_loopback(settings.host) and not settings.allow_open:
        raise AccessRefused(
            f"Parley would serve {settings.host} with no API keys: anyone who can reach it could read every "
            f"conversation and use the models. Set {settings.admin_key_env} (and create keys with `parley keys "
            "create --name NAME`), or pass --allow-open (PARLEY_ALLOW_OPEN=true) to run open deliberately."
        )
    return AccessPlan(required=required, admin_key=admin_key)


def key_hasher(settings: Settings, engine: AsyncEngine) -> KeyHasher:
    """The hasher keys are stored and checked with (AccessRefused when its secret is missing)."""
    try:
        secret = load_key_secret(
            settings.key_secret_env, settings.data_dir, shared_store=engine.dialect.name != "sqlite"
        )
    except KeySecretError as exc:
        raise AccessRefused(str(exc)) from exc
    return KeyHasher(secret)


class AccessControl:
    """What a server that requires keys holds: the keys, their cached lookups, and Redis's news of changes."""

    def __init__(self, keys: KeyStore, authenticator: Authenticator, listener: KeyChangeListener | None) -> None:
        self.keys = keys
        self.authenticator = authenticator
        self._listener = listener

    async def changed(self, key_id: str) -> None:
        """Key `key_id` was created or changed here: no server may go on with what it cached."""
        if self._listener is not None:
            await self._listener.announce(key_id)
        else:
            self.authenticator.forget(key_id)

    async def aclose(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()


async def open_access(settings: Settings, engine: AsyncEngine) -> AccessControl | None:
    """The server's access control; None for a server that runs open (no keys, as before keys existed)."""
    plan = await plan_access(settings, engine)
    if not plan.required:
        return None
    hasher = key_hasher(settings, engine)
    keys = KeyStore(engine, hasher)
    listener: KeyChangeListener | None = None
    authenticator = Authenticator(
        keys,
        plan.admin_key,
        cache_seconds=settings.key_cache_seconds,
        invalidations_live=lambda: listener is not None and listener.live,
    )
    if settings.redis_url is not None:
        listener = KeyChangeListener(settings.redis_url, settings.redis_prefix, authenticator.forget)
        await listener.start()
    return AccessControl(keys, authenticator, listener)


async def check_access(settings: Settings) -> None:
    """What the server's start would refuse, found before it serves (`parley serve` exits with the
    message): raises AccessRefused. The database is read only when `auth = "auto"` must count keys
    (its schema set up first, as the server would); if it can't be reached, the server's own start
    reports that."""
    from parley.store import create_engine, default_database_url, migrate

    engine = create_engine(settings.database_url or default_database_url(settings.data_dir))
    try:
        if settings.auth == "auto" and not os.environ.get(settings.admin_key_env, "").strip():
            try:
                await migrate(engine)
            except Exception:  # (unreachable, or not a database: the server's start says so)
                return
        if (await plan_access(settings, engine)).required:
            key_hasher(settings, engine)
    finally:
        await engine.dispose()
