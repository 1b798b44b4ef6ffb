"""`parley serve` as a user runs it, driven by the official openai client and the `parley` CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.process import parley_serve, run_parley

CONFIG = """
log_level = "info"

[[models]]
name = "smollm2"
provider = "llamacpp"
context_size = 1024
defaults = { max_tokens = 48 }

[[models]]
name = "echo"
provider = "fake"
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "parley.toml"
    config.write_text(f'data_dir = "{folder}"\n' + CONFIG)
    with parley_serve(config) as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_models_are_listed_for_the_openai_client(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["smollm2", "echo"]


def test_local_model_answers_without_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 48


def test_local_model_streams_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Write a sentence about the sea."}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=24,
    )
    pieces, finishes, usages = [], [], []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len(pieces) > 3, "the reply should arrive in several pieces"
    assert "".join(pieces).strip()
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert len(usages) == 1 and 0 < usages[0].completion_tokens <= 24


def test_unknown_model_is_a_404_for_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-9" in caught.value.message


def test_cli_lists_models_and_chats(server: str) -> None:
    listing = run_parley("models", "--url", server)
    assert listing.returncode == 0, listing.stderr
    assert "smollm2" in listing.stdout and "llamacpp" in listing.stdout and "echo" in listing.stdout

    said = run_parley("chat", "--url", server, "--model", "echo", "-m", "hello from the terminal")
    assert said.returncode == 0, said.stderr
    assert "hello from the terminal" in said.stdout
    assert "stop" in said.stdout


def test_cli_chat_session_streams_each_turn(server: str) -> None:
    said = run_parley("chat", "--url", server, "--model", "echo", stdin="first turn\n\nsecond turn\n/quit\n")
    assert said.returncode == 0, said.stderr
    assert said.stdout.count("echo> ") == 2, "the empty line is not sent"
    assert said.stdout.index("first turn") < said.stdout.index("second turn")


def test_cli_chat_reports_errors_clearly(server: str) -> None:
    said = run_parley("chat", "--url", server, "--model", "nope", "-m", "hi")
    assert said.returncode == 1
    assert "model 'nope' does not exist" in said.stderr


def test_invalid_config_stops_startup_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[models]]\nname = "remote"\nprovider = "openai"\n')
    result = run_parley("serve", "--config", str(config), timeout=30)
    assert result.returncode == 2
    # (an upstream is one base_url or a pool's endpoints: the message names the model and both)
    assert "models.0.openai" in result.stderr
    assert "base_url" in result.stderr
    assert "endpoints" in result.stderr
