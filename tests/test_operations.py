"""Health, readiness, request ids and CORS, as an operator and a browser see them."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.databases import PostgresUnavailable, create_postgres_database, drop_postgres_database
from tests.support.server import running_parley

USER = {"role": "user", "content": "hi"}


def test_health_ready_and_request_ids() -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url:
        health = httpx.get(f"{url}/health").json()
        timestamp = health.pop("timestamp")
        assert health == {
            "status": "healthy",
            "service": "parley",
            "version": "0.1.0",
            "model": "echo",
            "provider": "fake",
            "model_loaded": True,
        }
        assert abs(datetime.fromisoformat(timestamp).timestamp() - time.time()) < 60
        assert timestamp.endswith("Z")
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200
        assert ready.json()["models"] == {"echo": {"state": "ready", "error": None}}

        mine = httpx.get(f"{url}/health", headers={"x-request-id": "trace-123"})
        assert mine.headers["x-request-id"] == "trace-123"
        first, second = httpx.get(f"{url}/health"), httpx.get(f"{url}/health")
        assert len(first.headers["x-request-id"]) == 32
        assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_a_model_that_fails_to_load_makes_ready_say_why() -> None:
    models = [
        {"name": "echo", "provider": "fake"},
        {"name": "broken", "provider": "llamacpp", "path": "/nonexistent/model.gguf"},
    ]
    with running_parley(models=models, wait=False) as url:
        ready = httpx.get(f"{url}/ready")
        while ready.json()["models"]["broken"]["state"] == "loading":
            ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503
        assert "broken" in ready.json()["reason"] and "/nonexistent/model.gguf" in ready.json()["reason"]

        refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "broken", "messages": [USER]})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "model_not_ready"
        served = httpx.post(f"{url}/v1/chat/completions", json={"model": "echo", "messages": [USER]})
        assert served.json()["choices"][0]["message"]["content"] == "hi"


def test_cors_follows_the_config() -> None:
    with running_parley(models=[{"name": "echo", "provider": "fake"}], cors_origins=["https://app.example"]) as url:
        allowed = httpx.options(
            f"{url}/v1/chat/completions",
            headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        denied = httpx.options(
            f"{url}/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in denied.headers
        simple = httpx.get(f"{url}/v1/models", headers={"origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"]


def test_one_log_line_per_request_with_its_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parley.access")
    with running_parley(models=[{"name": "echo", "provider": "fake"}]) as url:
        caplog.clear()
        httpx.post(f"{url}/api/chat", json={"message": "hi"}, headers={"x-request-id": "req-42"})
        httpx.get(f"{url}/v1/models", headers={"x-request-id": "req-43"})
    lines = [r.getMessage() for r in caplog.records if r.name == "parley.access"]
    assert len([line for line in lines if line.startswith("req-42 ")]) == 1
    assert any(line.startswith("req-42 POST /api/chat 200 ") for line in lines)
    assert any(line.startswith("req-43 GET /v1/models 200 ") for line in lines)


def test_ready_reports_a_lost_database() -> None:
    try:
        url = asyncio.run(create_postgres_database())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        with running_parley(models=[{"name": "echo", "provider": "fake"}], database_url=url) as parley:
            assert httpx.get(f"{parley}/ready").status_code == 200
            asyncio.run(drop_postgres_database(url))
            lost = httpx.get(f"{parley}/ready")
            assert lost.status_code == 503
            assert lost.json()["database"] == "database unreachable"
            assert "database unreachable" in lost.json()["reason"]
            # The component is named; the database's name, host and the driver's words stay in the log.
            for secret in (make_url(url).database, "127.0.0.1", "5432", "does not exist"):
                assert str(secret) not in lost.text, lost.text
            assert httpx.get(f"{parley}/health").status_code == 200, "the process itself is still alive"
    finally:
        asyncio.run(drop_postgres_database(url))
