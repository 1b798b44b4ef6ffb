"""`log_format = "json"`: a real `parley serve` writes one JSON object per line, whose access lines
name the request id its client got back, and the upstream hears the same id as `x-request-id`."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.support.process import ServerProcess, parley_process
from tests.support.server import running_parley
from tests.support.upstream import PROMPT_TOKENS, TEXT_PIECES, Upstream, new_marker

LINE_FIELDS = {"time", "level", "logger", "message", "request_id"}


def json_config(tmp_path: Path, upstream: Upstream) -> Path:
    config = tmp_path / "parley.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\nlog_format = "json"\nlog_level = "info"\n\n'
        f'[[models]]\nname = "text"\nprovider = "openai"\nbase_url = "{upstream.base_url}/v1"\n'
    )
    return config


def logged(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server printed, each parsed as one JSON object (failing on any other line)."""
    entries = []
    for line in server.output().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert entry.keys() >= LINE_FIELDS, line
        entries.append(entry)
    return entries


def upstream_request_id(upstream: Upstream, marker: str) -> str | None:
    headers = {name.lower(): value for name, value in upstream.find(marker).headers.items()}
    return headers.get("x-request-id")


def access_line(server: ServerProcess, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        lines = [e for e in logged(server) if e["logger"] == "parley.access" and e["request_id"] == request_id]
        if lines:
            (line,) = lines
            return line
        assert time.monotonic() < deadline, f"no access line for {request_id}"
        time.sleep(0.05)


def test_parley_serve_writes_every_record_as_one_json_object(upstream: Upstream, tmp_path: Path) -> None:
    with parley_process(json_config(tmp_path, upstream)) as server:
        marker = new_marker()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        reply = client.chat.completions.with_raw_response.create(
            model="text", messages=[{"role": "user", "content": marker}]
        )
        request_id = reply.headers["x-request-id"]
        assert reply.parse().choices[0].message.content == "".join(TEXT_PIECES)
        forged = httpx.get(server.url + "/%0A{%22level%22:%22error%22}", headers={"x-request-id": "forged-line"})
        assert forged.status_code == 404
        chat = access_line(server, request_id)
        missing = access_line(server, "forged-line")
        server.process.terminate()
        server.wait(15)
        entries = logged(server)  # every line, shutdown's included, is JSON

    assert upstream_request_id(upstream, marker) == request_id
    assert chat["route"] == "/v1/chat/completions"
    assert chat["method"] == "POST"
    assert chat["status"] == 200
    assert chat["key"] == "open"
    assert chat["model"] == "text"
    assert chat["prompt_tokens"] == PROMPT_TOKENS
    assert chat["completion_tokens"] == len(TEXT_PIECES)
    assert isinstance(chat["duration_ms"], float) and chat["duration_ms"] > 0
    assert chat["level"] == "info"
    # A client's newline and quotes stay inside their line, as a string value.
    assert missing["path"] == '/\n{"level":"error"}'
    assert missing["route"] == "unmatched"
    assert missing["status"] == 404
    assert "model" not in missing
    assert not [e for e in entries if e.get("level") == "error"]
    assert any(e["logger"].startswith("uvicorn") for e in entries), "uvicorn's own records are JSON lines too"


def test_the_request_id_goes_upstream_on_streams_and_is_the_one_the_client_got(upstream: Upstream) -> None:
    models = [{"name": "text", "provider": "openai", "base_url": upstream.base_url + "/v1"}]
    with running_parley(models=models) as url:
        marker = new_marker()
        body = {"model": "text", "messages": [{"role": "user", "content": marker}], "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as reply:
            reply.read()
        assert upstream_request_id(upstream, marker) == reply.headers["x-request-id"]

        chosen = f"trace-{uuid.uuid4().hex}"
        marker = new_marker()
        stored = httpx.post(
            url + "/api/chat", json={"message": marker, "model": "text"}, headers={"x-request-id": chosen}
        )
        assert stored.status_code == 200
        assert upstream_request_id(upstream, marker) == chosen
