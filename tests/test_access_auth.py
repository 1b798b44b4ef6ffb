"""When a server requires keys, and the configurations `parley serve` refuses to start with."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.process import parley_process, run_parley

STRONG_ADMIN_KEY = secrets.token_urlsafe(32)


def _config(folder: Path, extra: str = "") -> Path:
    config = folder / "parley.toml"
    config.write_text(f'data_dir = "{folder / "data"}"\n{extra}[[models]]\nname = "echo"\nprovider = "fake"\n')
    return config


def _serve_refused(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `parley serve`, expecting it to refuse before serving; what it said."""
    done = run_parley("serve", "--config", str(config), "--port", "1", *args, env=env, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    return " ".join(done.stderr.split())  # (rich wraps long lines)


def test_an_open_server_on_a_public_address_refuses_to_start_saying_what_to_do(tmp_path: Path) -> None:
    said = _serve_refused(_config(tmp_path), "--host", "0.0.0.0", env={"PARLEY_ADMIN_KEY": ""})
    assert "Refusing to start" in said
    assert "0.0.0.0" in said
    assert "parley keys create" in said and "--allow-open" in said and "PARLEY_ADMIN_KEY" in said


def test_allow_open_runs_open_on_a_public_address_deliberately(tmp_path: Path) -> None:
    with parley_process(
        _config(tmp_path, 'host = "0.0.0.0"\n'), args=("--allow-open",), env={"PARLEY_ADMIN_KEY": ""}
    ) as server:
        assert httpx.get(f"{server.url}/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("admin_key", "why"),
    [
        ("", "is not set"),
        ("changeme", "placeholder"),
        ("sk-1234", "placeholder"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "placeholder"),
        ("short-but-random-9f3k", "shorter than 24"),
    ],
    ids=["missing", "changeme", "sk-1234", "one-letter", "short"],
)
def test_a_weak_admin_key_refuses_to_start_when_keys_are_required(tmp_path: Path, admin_key: str, why: str) -> None:
    said = _serve_refused(_config(tmp_path, 'auth = "required"\n'), env={"PARLEY_ADMIN_KEY": admin_key})
    assert why in said
    assert "PARLEY_ADMIN_KEY" in said
    if admin_key:
        assert admin_key not in said  # a secret is named, never shown


def test_auto_requires_keys_once_one_exists(tmp_path: Path) -> None:
    config = _config(tmp_path)
    made = run_parley("keys", "create", "--config", str(config), "--name", "first")
    assert made.returncode == 0, made.stderr
    # A key exists: "auto" now requires keys, so the admin key must be set.
    assert "is not set" in _serve_refused(config, env={"PARLEY_ADMIN_KEY": ""})
    with parley_process(config, env={"PARLEY_ADMIN_KEY": STRONG_ADMIN_KEY}) as server:
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        with_key = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {made.stdout.strip()}"})
        assert with_key.status_code == 200
        assert httpx.get(f"{server.url}/api/admin/keys", headers={"x-api-key": STRONG_ADMIN_KEY}).status_code == 200
        listed = run_parley("models", "--url", server.url, "--api-key", made.stdout.strip())
        assert listed.returncode == 0 and "echo" in listed.stdout, listed.stderr
        keyless = run_parley("models", "--url", server.url, env={"PARLEY_API_KEY": ""})
        assert keyless.returncode == 1 and "an API key is required" in keyless.stderr


def test_auth_off_runs_open_on_loopback_even_with_keys(tmp_path: Path) -> None:
    config = _config(tmp_path, 'auth = "off"\n')
    assert run_parley("keys", "create", "--config", str(config), "--name", "unused").returncode == 0
    with parley_process(config, env={"PARLEY_ADMIN_KEY": ""}) as server:
        assert httpx.get(f"{server.url}/v1/models").status_code == 200
        refused = httpx.get(f"{server.url}/api/admin/keys")
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin_key_required")


def test_cors_preflights_pass_without_a_key(tmp_path: Path) -> None:
    config = _config(tmp_path, 'auth = "required"\ncors_origins = ["https://app.example"]\n')
    with parley_process(config, env={"PARLEY_ADMIN_KEY": STRONG_ADMIN_KEY}) as server:
        preflight = httpx.options(
            f"{server.url}/v1/chat/completions",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        # The 401 itself carries CORS headers, so the page can read why it was refused.
        refused = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://app.example"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "https://app.example"


def test_keys_create_refuses_bad_input_clearly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert run_parley("keys", "create", "--config", str(config), "--name", "twice").returncode == 0
    again = run_parley("keys", "create", "--config", str(config), "--name", "twice")
    assert again.returncode == 1 and "exists already" in again.stderr
    expiry = run_parley("keys", "create", "--config", str(config), "--name", "x", "--expires", "soon")
    assert expiry.returncode != 0 and "30d" in expiry.stderr
    missing = run_parley("keys", "revoke", "--config", str(config), "nobody")
    assert missing.returncode == 1 and "no API key 'nobody'" in missing.stderr
