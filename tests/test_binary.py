"""The standalone binary, as a desktop app starts it: `python scripts/build.py` (PyInstaller) makes
one executable named by the target triple; started with `serve --port 0 --parent-pid PID` it prints
the port line, answers /health and a chat with the bundled SmolLM2, and exits when its parent dies.

The build takes several minutes (about 14 on a loaded 2-core machine). PARLEY_TEST_BINARY=PATH
tests an executable built before instead of building one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import openai
import pytest

from tests.support.process import read_first_line
from tests.support.server import wait_ready

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build.py"
BUILD_TIMEOUT = 45 * 60


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("parley_build_script", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_executable_is_named_by_the_target_triple() -> None:
    build = build_module()
    assert build.target_triple("x86_64", "linux") == "x86_64-unknown-linux-gnu"
    assert build.target_triple("arm64", "darwin") == "aarch64-apple-darwin"
    assert build.target_triple("AMD64", "win32") == "x86_64-pc-windows-msvc"
    assert build.executable_name("parley", "x86_64-unknown-linux-gnu") == "parley-x86_64-unknown-linux-gnu"
    assert build.executable_name("api", "x86_64-pc-windows-msvc") == "api-x86_64-pc-windows-msvc.exe"
    with pytest.raises(SystemExit):
        build.target_triple("sparc64", "sunos5")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("PARLEY_TEST_BINARY")
    if prebuilt:
        return Path(prebuilt)
    folder = tmp_path_factory.mktemp("binary")
    built = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--dist", str(folder / "dist"), "--work", str(folder / "work")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    print(built.stdout.strip().splitlines()[-1])  # the size and build time, for the log
    build = build_module()
    name: str = build.executable_name("parley", build.target_triple())
    return folder / "dist" / name


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    """The desktop app's stand-in."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.mark.slow
def test_the_binary_serves_the_local_model_as_a_sidecar_and_exits_with_its_parent(
    binary: Path, parent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    assert binary.name == f"parley-{build_module().target_triple()}"
    started = time.monotonic()
    server = subprocess.Popen(
        [str(binary), "serve", "--port", "0", "--parent-pid", str(parent.pid)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "binary.log").open("wb"),
        text=True,
        cwd=tmp_path,  # its data folder (.parley) goes here
        env={key: value for key, value in os.environ.items() if not key.startswith(("PARLEY_", "PYTHON"))},
    )
    try:
        announced = json.loads(read_first_line(server, timeout=180))
        print(f"port line after {time.monotonic() - started:.1f} s")
        url = announced["url"]
        wait_ready(url, 180)  # /health answers 503 while the model loads
        print(f"ready after {time.monotonic() - started:.1f} s")
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["provider"] == "llamacpp"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16
        )
        assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens > 0
        parent.kill()
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
