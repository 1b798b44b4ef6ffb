"""Two `parley serve` processes on different ports, one PostgreSQL database: one set of conversations."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.process import parley_serve
from tests.support.upstream import TEXT_REPLY, Upstream

pytestmark = pytest.mark.slow


def shared_config(folder: Path, upstream: Upstream, postgres_url: str) -> Path:
    """A parley.toml for servers sharing one PostgreSQL database, with the scripted upstream's `text`."""
    config = folder / "parley.toml"
    config.write_text(
        f'database_url = "{postgres_url}"\n'
        f'data_dir = "{folder}"\n'
        "[[models]]\n"
        'name = "remote"\nprovider = "openai"\n'
        f'base_url = "{upstream.base_url}/v1"\nmodel = "text"\n'
    )
    return config


def test_a_conversation_started_on_one_process_continues_on_the_other(
    upstream: Upstream, postgres_url: str, tmp_path: Path
) -> None:
    config = shared_config(tmp_path, upstream, postgres_url)
    with parley_serve(config) as first, parley_serve(config) as second:
        assert first != second
        started = httpx.post(f"{first}/api/chat", json={"message": "procs-1: hello from one", "stream": False})
        conversation = started.json()["conversation_id"]
        continued = httpx.post(
            f"{second}/api/chat",
            json={"message": "procs-2: and on to two", "conversation_id": conversation, "stream": False},
        )
        assert continued.status_code == 200
        sent = [(m["role"], m["content"]) for m in upstream.find("procs-2").body["messages"]]
        assert sent == [
            ("user", "procs-1: hello from one"),
            ("assistant", TEXT_REPLY),
            ("user", "procs-2: and on to two"),
        ]
        seen_by_first = httpx.get(f"{first}/api/conversations/{conversation}").json()
        assert [m["content"] for m in seen_by_first["messages"]][-1] == TEXT_REPLY
        assert seen_by_first["message_count"] == 4


def test_turns_alternating_between_processes_each_see_the_whole_conversation(
    upstream: Upstream, postgres_url: str, tmp_path: Path
) -> None:
    """Each process keeps recent histories in memory; a turn still sees the other process's turns."""
    config = shared_config(tmp_path, upstream, postgres_url)
    with parley_serve(config) as first, parley_serve(config) as second:
        conversation = None
        expected: list[tuple[str, str]] = []
        for turn in range(6):
            server = (first, second)[turn % 2]
            message = f"alt-{turn}: a turn on server {turn % 2}"
            body = {"message": message, "stream": False} | ({"conversation_id": conversation} if conversation else {})
            reply = httpx.post(f"{server}/api/chat", json=body, timeout=30)
            assert reply.status_code == 200, reply.text
            conversation = reply.json()["conversation_id"]
            sent = [(m["role"], m["content"]) for m in upstream.find(f"alt-{turn}:").body["messages"]]
            assert sent == [*expected, ("user", message)], f"turn {turn} saw a stale history"
            expected += [("user", message), ("assistant", TEXT_REPLY)]
