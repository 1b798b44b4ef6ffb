"""From a key sent with a request to its principal, without a database query for keys seen lately.

Looked-up keys are cached in process by their hash, valid or not. A key changed on this server
is dropped from the cache at once; one changed elsewhere (another server, `parley keys`) is
dropped when its invalidation arrives over Redis (`parley.access.invalidation`), which the
changer waits for. Without Redis, or while Redis is unreachable, an entry is trusted for
`key_cache_seconds` only: that is how long a key revoked on another server may still work here.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from parley.access.key_store import KeyRecord, KeyStore
from parley.access.keys import could_be_key
from parley.access.principal import ADMIN, Principal

# Kept while invalidations flow: a bound on what a lost message could cost, not a freshness rule.
TRUSTED_SECONDS = 600.0
MAX_CACHED = 10_000  # keys, valid or not: a flood of made-up keys can't grow the cache beyond this


MAX_END_USERS = 1_000  # per cached key: the principals of the end users an application named lately


@dataclass(slots=True)
class _Cached:
    principal: Principal | None  # None: no usable key (unknown, revoked or expired)
    key_expires: float | None  # the key's own expiry, as a Unix time
    stale_after: float  # monotonic
    end_users: dict[str, Principal] = field(default_factory=dict)

    def for_end_user(self, end_user: str) -> Principal | None:
        principal = self.end_users.get(end_user)
        if principal is None and self.principal is not None:
            if len(self.end_users) >= MAX_END_USERS:
                self.end_users.clear()
            principal = self.end_users[end_user] = replace(self.principal, end_user=end_user)
        return principal


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        admin_key: str | None,
        *,
        cache_seconds: float,
        invalidations_live: Callable[[], bool] = lambda: False,
    ) -> None:
        self.keys = keys
        self._admin_key = admin_key.encode() if admin_key else None
        self._cache_seconds = cache_seconds
        self._invalidations_live = invalidations_live
        self._cache: dict[bytes, _Cached] = {}
        self._generation = 0  # counts changes heard, to tell a lookup that raced one

    async def principal_for(self, key: str, end_user: str | None = None) -> Principal | None:
        """The principal of `key` (for `end_user`, when the application names one): ADMIN for the
        admin key; None for no key Parley accepts."""
        if self._admin_key is not None and hmac.compare_digest(key.encode(), self._admin_key):
            return ADMIN
        if not could_be_key(key):
            return None
        # The cache is keyed by a plain SHA-256 (a quarter of an HMAC's cost): a key holds 256 random
        # bits, so its hash reveals nothing, and no key is kept in memory beyond its request.
        digest = hashlib.sha256(key.encode()).digest()
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is None or cached.stale_after < now:
            generation = self._generation
            record = await self.keys.find(key)
            # A change heard while the row was read may be newer than the row: then it is used
            # for this request only, not kept.
            cached = self._remember(digest, record, now, keep=generation == self._generation)
        if cached.key_expires is not None and cached.key_expires <= time.time():
            return None
        return cached.principal if end_user is None else cached.for_end_user(end_user)

    def forget(self, key_id: str | None = None) -> None:
        """Drop the cached lookups of key `key_id` (None: of every key, and every unknown key)."""
        self._generation += 1
        if key_id is None:
            self._cache.clear()
            return
        for digest in [digest for digest, cached in self._cache.items() if _key_id(cached) in (key_id, None)]:
            del self._cache[digest]

    def _remember(self, digest: bytes, record: KeyRecord | None, now: float, *, keep: bool) -> _Cached:
        usable = record is not None and record.usable(datetime.now(UTC))
        cached = _Cached(
            principal=record.principal() if usable and record is not None else None,
            key_expires=record.expires_at.timestamp() if record is not None and record.expires_at else None,
            stale_after=now + (TRUSTED_SECONDS if self._invalidations_live() else self._cache_seconds),
        )
        if not keep:
            return cached
        if len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]  # the oldest lookup
        self._cache[digest] = cached
        return cached


def _key_id(cached: _Cached) -> str | None:
    return None if cached.principal is None else cached.principal.key_id
