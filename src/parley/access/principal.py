"""Who is calling: the principal that access decides at the edge and every layer below receives."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What one key (or one model) may use; None: no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_streams: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    @property
    def any(self) -> bool:
        return any(
            value is not None
            for value in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.max_streams,
                self.daily_tokens,
                self.monthly_tokens,
            )
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request, as authenticated by its key.

    `key_id` is None on a server that runs open (no keys): such a caller sees every
    conversation, as before keys existed. `end_user` is the end user an application names
    (`X-Parley-User`, or OpenAI's `user` field) when it serves many people through one key.
    """

    key_id: str | None = None
    alias: str = "open"  # the key's name, for logs and metrics (never the key itself)
    end_user: str | None = None
    admin: bool = False
    models: frozenset[str] | None = None  # the models the key may use; None: all
    agents: frozenset[str] | None = None  # the agents the key may use; None: all
    limits: KeyLimits = KeyLimits()

    @property
    def owner(self) -> str | None:
        """The owner stored with what this caller creates, and the filter on what it reads.

        None sees everything: the admin key, and callers of a server that runs open who name no
        end user."""
        if self.admin:
            return None
        if self.key_id is None:  # an open server: private only between the end users an app names
            return None if self.end_user is None else f"open/{self.end_user}"
        return self.key_id if self.end_user is None else f"{self.key_id}/{self.end_user}"


OPEN = Principal()
ADMIN = Principal(alias="admin", admin=True)

PRINCIPAL_STATE = "principal"  # the key under which access leaves the principal in the ASGI scope's state


def principal_of(connection: HTTPConnection) -> Principal:
    """The principal access put on this request (OPEN where access did not run)."""
    principal: Principal = connection.scope.get("state", {}).get(PRINCIPAL_STATE, OPEN)
    return principal
