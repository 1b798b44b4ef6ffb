"""Configuration: a TOML file, `PARLEY_` environment variables, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.config import (
    ConfigError,
    FakeConfig,
    LlamaCppConfig,
    OpenAICompatConfig,
    load_settings,
)

FILE = """
host = "0.0.0.0"
port = 9001
cors_origins = ["https://app.example"]

[[models]]
name = "remote"
provider = "openai"
base_url = "http://127.0.0.1:8080/v1"
model = "qwen2.5:7b"
api_key_env = "REMOTE_KEY"
context_size = 32768
defaults = { temperature = 0.2, max_tokens = 512 }

[[models]]
name = "local"
provider = "llamacpp"

[[agents]]
name = "support"
system_prompt = "You answer questions about our product."
model = "local"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "parley.toml"
    path.write_text(text)
    return path


def test_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_PORT", raising=False)
    settings = load_settings(write(tmp_path, FILE))
    assert (settings.host, settings.port, settings.cors_origins) == ("0.0.0.0", 9001, ["https://app.example"])
    remote, local = settings.models
    assert isinstance(remote, OpenAICompatConfig)
    assert (remote.model, remote.api_key_env, remote.defaults.temperature) == (
        "qwen2.5:7b",
        "REMOTE_KEY",
        0.2,
    )
    assert isinstance(local, LlamaCppConfig)
    assert local.path is None, "no path means the bundled SmolLM2"
    assert settings.default_model == "remote"
    assert settings.agents[0].model == "local"


def test_environment_beats_the_file_and_arguments_beat_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_PORT", "9100")
    monkeypatch.setenv("PARLEY_CORS_ORIGINS", '["https://other.example"]')
    config = write(tmp_path, FILE)
    assert load_settings(config).port == 9100
    assert load_settings(config).cors_origins == ["https://other.example"]
    assert load_settings(config, port=9200).port == 9200


def test_models_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MODELS", '[{"name": "echo", "provider": "fake", "delay_ms": 5}]')
    (model,) = load_settings().models
    assert isinstance(model, FakeConfig)
    assert model.delay_ms == 5


def test_no_config_serves_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_MODELS", raising=False)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    (model,) = settings.models
    assert isinstance(model, LlamaCppConfig)
    assert model.name == "smollm2"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[[models]]\nname = "x"\nprovider = "openai"\n', "models.0.openai: Value error, set base_url (one upstream)"),
        ('[[models]]\nname = "x"\nprovider = "magic"\n', "models.0: Input tag 'magic' found"),
        ('[[models]]\nname = "x"\nprovider = "fake"\ncolour = "red"\n', "models.0.fake.colour: Extra inputs"),
        ('port = "eighty"\n', "port: Input should be a valid integer"),
        ("models = []\n", "models: List should have at least 1 item"),
        (
            '[[models]]\nname = "a"\nprovider = "fake"\n[[models]]\nname = "a"\nprovider = "fake"\n',
            "model names must be unique; repeated: a",
        ),
        (
            '[[models]]\nname = "a"\nprovider = "fake"\n[[agents]]\nname = "b"\nsystem_prompt = "x"\nmodel = "zz"\n',
            "agent 'b' names unknown model 'zz'",
        ),
        (
            '[[models]]\nname = "a"\nprovider = "openai"\nbase_url = "http://x"\napi_key = "k"\napi_key_env = "K"\n',
            "set api_key or api_key_env, not both",
        ),
        ("port = \n", "parley.toml"),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert names in str(caught.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")
