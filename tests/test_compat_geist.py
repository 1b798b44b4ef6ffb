"""Geist's documented call, made with curl itself: `curl -X POST …/api/chat -d '{"message":"Hello"}'`
(no content type of its own, so curl sends a form's) streams the reply, and a model configured
with `send_reasoning = false` (gpt-oss behind Geist) streams only its final answer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.support.server import running_parley

MODELS = [
    {
        "name": "gpt-oss",
        "provider": "fake",
        "replies": ["Hello! How can I help?"],
        "reasoning": "The user greets me; greet back.",
        "send_reasoning": False,
    }
]


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_geist_curl_streams_only_the_answer() -> None:
    with running_parley(models=MODELS) as url:
        output = curl("-N", "-X", "POST", f"{url}/api/chat", "-d", '{"message":"Hello"}')
        plain = curl("-X", "POST", f"{url}/chat", "-H", "accept: application/json", "-d", '{"message":"Hello"}')
    events = [_fields(block) for block in re.split(r"\r?\n\r?\n", output.strip())]
    names = [event["event"] for event in events]
    assert names[0] == "message_start"
    assert names[-1] == "message_complete"
    assert "reasoning_delta" not in names
    assert "greet back" not in output, "the reasoning never leaves the server"
    answer = "".join(json.loads(event["data"])["text"] for event in events if event["event"] == "text_delta")
    assert answer == "Hello! How can I help?"
    assert json.loads(plain)["response"] == "Hello! How can I help?"


def _fields(block: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
