"""API key material: new keys, their keyed hash, and the secret that hash is keyed with.

A key is `pk-` and 43 URL-safe characters (32 random bytes). Parley keeps only its HMAC-SHA256
under a server secret, and its first characters (the prefix) to find it by and to show it by:
a stolen database gives neither the keys nor, without the secret, a way to test guesses.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path

KEY_MARK = "pk-"
KEY_RANDOM_BYTES = 32
PREFIX_CHARS = 12  # "pk-" and 9 characters: shown in listings and logs, and the lookup index
MIN_SECRET_CHARS = 32
SECRET_FILE = "key-secret"
_KEY_SHAPE = re.compile(rf"{KEY_MARK}[A-Za-z0-9_-]{{{PREFIX_CHARS - len(KEY_MARK) + 1},125}}")


class KeySecretError(Exception):
    """The secret keys are hashed with can't be had as the configuration stands; says why."""


def new_key() -> str:
    return KEY_MARK + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def prefix_of(key: str) -> str:
    return key[:PREFIX_CHARS]


def could_be_key(text: str) -> bool:
    """Whether `text` has a Parley key's shape (checked before any lookup: junk costs nothing)."""
    return _KEY_SHAPE.fullmatch(text) is not None


class KeyHasher:
    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def digest(self, key: str) -> str:
        """The hash kept in the database (hex)."""
        return hmac.digest(self._secret, key.encode(), "sha256").hex()


def load_key_secret(env_name: str, data_dir: Path, *, shared_store: bool) -> bytes:
    """The hashing secret: from the variable `env_name`, else (one server, SQLite) a random one made
    once in `data_dir` and readable by its owner only. Servers sharing a database must all hash
    alike, so there the variable is required."""
    value = os.environ.get(env_name, "").strip()
    if value:
        if len(value) < MIN_SECRET_CHARS:
            raise KeySecretError(f"{env_name} must be at least {MIN_SECRET_CHARS} characters")
        return value.encode()
    if shared_store:
        raise KeySecretError(
            f"API keys on a PostgreSQL store need {env_name} set, to the same random value on every server "
            "sharing the database (each server would otherwise hash keys with a secret of its own, and a key "
            "made on one would be refused by the others); e.g. "
            "`export PARLEY_KEY_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`"
        )
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32).encode()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made meanwhile by another process (a `parley keys` next to the server)
        return path.read_bytes().strip()
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret)
    return secret
