"""Tether's desktop client against Parley: its `TETHER_*` settings, `GET /health`, `GET /model`
and `POST /chat` answered with its JSON `ChatResponse`, the requests exactly as its client sends them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parley.config import ConfigError, load_settings
from tests.support.process import parley_serve
from tests.support.server import running_parley
from tests.support.upstream import TEXT_REPLY, Upstream, new_marker

# tether-core's apiFetch: JSON content type, the browser's default Accept.
TETHER_HEADERS = {"content-type": "application/json", "accept": "*/*"}


@pytest.fixture
def tether_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TETHER_", "PARLEY_")):
            monkeypatch.delenv(name)


def test_tether_settings_configure_parley(tether_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_HOST", "0.0.0.0")
    monkeypatch.setenv("TETHER_PORT", "8123")
    monkeypatch.setenv("TETHER_LLM_BACKEND", "openai")
    monkeypatch.setenv("TETHER_OPENAI_MODEL", "gpt-4.1-mini")
    monkeypatch.setenv("TETHER_CONTEXT_LENGTH", "8192")
    monkeypatch.setenv("TETHER_DEFAULT_TEMPERATURE", "0.3")
    monkeypatch.setenv("TETHER_DEFAULT_MAX_TOKENS", "300")
    settings = load_settings()
    assert (settings.host, settings.port, settings.chat_route_reply) == ("0.0.0.0", 8123, "json")
    [model] = settings.models
    assert model.provider == "openai"
    assert (model.name, model.base_url, model.api_key_env) == (
        "gpt-4.1-mini",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    assert model.context_size == 8192
    assert (model.defaults.temperature, model.defaults.max_tokens) == (0.3, 300)


def test_local_backend_takes_the_model_path(tether_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TETHER_LLM_BACKEND", "local")
    monkeypatch.setenv("TETHER_MODEL_PATH", str(tmp_path / "model.gguf"))
    [model] = load_settings().models
    assert model.provider == "llamacpp"
    assert model.path == tmp_path / "model.gguf"


def test_parley_settings_win_over_tether_aliases(tether_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_PORT", "8123")
    monkeypatch.setenv("PARLEY_PORT", "8124")
    assert load_settings().port == 8124


def test_a_bad_tether_backend_stops_startup_with_its_name(tether_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_LLM_BACKEND", "cloud")
    with pytest.raises(ConfigError, match="TETHER_LLM_BACKEND"):
        load_settings()


def test_without_tether_settings_nothing_changes(tether_env: None) -> None:
    settings = load_settings()
    assert (settings.port, settings.chat_route_reply, settings.models[0].name) == (8000, "stream", "smollm2")


@pytest.fixture(scope="module")
def tether_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`parley serve` configured only by Tether's environment variables, as the desktop app starts it."""
    work = tmp_path_factory.mktemp("tether")
    config = work / "parley.toml"
    config.write_text(f"data_dir = {str(work / 'data')!r}\n")
    saved = dict(os.environ)
    os.environ.update({"TETHER_LLM_BACKEND": "mock", "TETHER_DEFAULT_MAX_TOKENS": "64"})
    try:
        with parley_serve(config) as url:
            yield url
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_tether_client_waits_for_health_then_chats(tether_server: str) -> None:
    health = httpx.get(f"{tether_server}/health", headers=TETHER_HEADERS).json()
    assert health["status"] == "healthy"
    assert health["model_loaded"] is True
    assert health["version"] == "0.1.0"
    model = httpx.get(f"{tether_server}/model", headers=TETHER_HEADERS).json()
    assert model == {"name": "mock", "loaded": True, "type": "custom", "context_length": None}
    reply = httpx.post(f"{tether_server}/chat", headers=TETHER_HEADERS, json={"message": "Hello, Tether"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "response": "Hello, Tether",
        "thinking": None,
        "tokens_used": reply.json()["tokens_used"],
        "model": "mock",
        "finish_reason": "stop",
    }
    assert reply.json()["tokens_used"] > 0


def test_tether_history_reaches_the_model(upstream: Upstream) -> None:
    marker = new_marker()
    body = {
        "message": f"and now? {marker}",
        "history": [
            {"role": "user", "content": "first question", "timestamp": 1700000000},
            {"role": "assistant", "content": "first answer"},
        ],
        "temperature": 0.7,
    }
    with running_parley(models=upstream.parley_models(), chat_route_reply="json") as url:
        reply = httpx.post(f"{url}/chat", headers=TETHER_HEADERS, json=body)
    assert reply.json()["response"] == TEXT_REPLY
    sent = upstream.find(marker).body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", f"and now? {marker}"),
    ]


@pytest.mark.slow
def test_tether_errors_are_openai_shaped(tether_server: str) -> None:
    reply = httpx.post(f"{tether_server}/chat", headers=TETHER_HEADERS, json={"message": "hi", "model": "llama3"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    reply = httpx.post(f"{tether_server}/chat", headers=TETHER_HEADERS, json={"message": "hi", "images": ["aGk="]})
    assert reply.status_code == 400
