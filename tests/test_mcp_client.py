"""MCP servers as Parley's tools: real servers (tests/support/mcp_server.py) over stdio and HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from parley.tools import invoke
from parley.tools.config import MCPServerConfig
from parley.tools.mcp_client import MCPServer
from tests.support.process import free_port

SERVER_MODULE = [sys.executable, "-m", "tests.support.mcp_server"]


def _stdio_config(name: str = "files") -> MCPServerConfig:
    return MCPServerConfig(name=name, command=SERVER_MODULE[0], args=[*SERVER_MODULE[1:], "stdio"], cwd=None)


class _HttpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        self.process = subprocess.Popen([*SERVER_MODULE, "http", str(self.port)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the MCP test server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def http_server() -> Iterator[_HttpServer]:
    server = _HttpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["stdio", "http"])
async def connected(request: pytest.FixtureRequest) -> AsyncIterator[MCPServer]:
    http: _HttpServer | None = None
    if request.param == "stdio":
        config = _stdio_config()
    else:
        http = _HttpServer()
        http.start()
        config = MCPServerConfig(name="files", url=http.url)
    server = MCPServer(config)
    server.start()
    try:
        assert await server.wait_ready(30), server.last_error
        yield server
    finally:
        await server.aclose()
        if http is not None:
            http.stop()


async def test_tools_are_listed_with_the_server_prefix_and_called(connected: MCPServer) -> None:
    assert {"files__add", "files__slow", "files__crash", "files__grow", "files__fail"} <= set(connected.tools)
    add = connected.tools["files__add"]
    assert add.spec.parameters["required"] == ["a", "b"]
    outcome = await invoke(add, '{"a": 2, "b": 40}', time_limit=10)
    assert (outcome.output, outcome.error) == ("42", None)


async def test_a_tool_error_and_bad_arguments_reach_the_model_as_errors(connected: MCPServer) -> None:
    failed = await invoke(connected.tools["files__fail"], "{}", time_limit=10)
    assert failed.error is not None and "the disk is full" in failed.error
    wrong = await invoke(connected.tools["files__add"], '{"a": "two"}', time_limit=10)
    assert wrong.error is not None and "invalid arguments" in wrong.error


async def test_a_slow_tool_times_out_and_the_server_stays_usable(connected: MCPServer) -> None:
    started = time.monotonic()
    outcome = await invoke(connected.tools["files__slow"], '{"seconds": 30}', time_limit=0.5)
    assert outcome.error == "the tool did not answer within 0.5 seconds"
    assert time.monotonic() - started < 5
    again = await invoke(connected.tools["files__add"], '{"a": 1, "b": 1}', time_limit=10)
    assert again.output == "2"


async def test_list_changed_brings_new_tools(connected: MCPServer) -> None:
    assert "files__extra" not in connected.tools
    grown = await invoke(connected.tools["files__grow"], "{}", time_limit=10)
    assert grown.output == "grown"
    assert await connected.wait_until(lambda server: "files__extra" in server.tools, 10)
    outcome = await invoke(connected.tools["files__extra"], "{}", time_limit=10)
    assert outcome.output == "extra here"


async def test_a_server_killed_mid_call_fails_the_call_promptly_and_comes_back() -> None:
    server = MCPServer(_stdio_config())
    server.start()
    try:
        assert await server.wait_ready(30)
        started = time.monotonic()
        outcome = await invoke(server.tools["files__crash"], "{}", time_limit=20)
        assert outcome.error is not None and "files" in outcome.error
        assert time.monotonic() - started < 10
        assert await server.wait_until(lambda again: again.state == "ready", 20)
        outcome = await invoke(server.tools["files__add"], '{"a": 3, "b": 4}', time_limit=10)
        assert outcome.output == "7"
    finally:
        await server.aclose()


async def test_a_server_that_is_down_fails_its_tools_at_once(http_server: _HttpServer) -> None:
    server = MCPServer(MCPServerConfig(name="web", url=http_server.url, connect_timeout_seconds=2))
    server.start()
    try:
        assert await server.wait_ready(30)
        add = server.tools["web__add"]
        http_server.stop()
        deadline = time.monotonic() + 30
        outcome = await invoke(add, '{"a": 1, "b": 2}', time_limit=5)
        while outcome.error is None and time.monotonic() < deadline:
            outcome = await invoke(add, '{"a": 1, "b": 2}', time_limit=5)
        assert outcome.error is not None and "web" in outcome.error
        started = time.monotonic()
        outcome = await invoke(add, '{"a": 1, "b": 2}', time_limit=5)
        assert outcome.error is not None and time.monotonic() - started < 1
        assert server.state == "down" and server.last_error
    finally:
        await server.aclose()


async def test_a_server_that_never_starts_is_reported_down() -> None:
    server = MCPServer(MCPServerConfig(name="ghost", command="/nonexistent/mcp-server"))
    server.start()
    try:
        assert not await server.wait_ready(10)
        assert server.state == "down" and server.last_error
    finally:
        await server.aclose()
