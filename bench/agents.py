"""The agent run loop's own cost per step, and MCP tool-call latency over stdio and HTTP.

1. Loop overhead: a scripted in-process model (no network: what is measured is Parley's work)
   answers an agent first with a call of a no-op tool, then with text. The same two model calls
   made as two plain runs (no agent) are the baseline; the difference, per step, is what the
   loop adds: collecting the call, checking its arguments against the schema, running the tool,
   appending call and result, the step events.
2. MCP latency: `tests/support/mcp_server.py` (the `mcp` SDK's server) over stdio and over
   Streamable HTTP on 127.0.0.1, called through Parley's MCP client; p50 and p99 of a call.

    python bench/agents.py [--runs 2000] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # (tests.support, for the MCP server)

from bench.harness import free_port, percentile

from parley.chat.service import ChatService
from parley.config import AgentConfig, FakeConfig
from parley.events import EventBatch, Finish, TextDelta, ToolCallDelta, Usage
from parley.models.base import ChatMessage, ChatRequest, Model
from parley.models.registry import ModelRegistry, ModelState
from parley.tools import invoke
from parley.tools.base import Tool, ToolSpec
from parley.tools.config import MCPServerConfig, ToolSettings
from parley.tools.mcp_client import MCPServer
from parley.tools.registry import ToolRegistry

ANSWER = [TextDelta(f"tok{i} ") for i in range(20)]
MCP_SERVER = [sys.executable, "-m", "tests.support.mcp_server"]


class ScriptedModel(Model):
    """Calls `noop` when the conversation has no tool result yet, else answers in 20 pieces."""

    provider = "bench"
    supports_tools: ClassVar[bool] = True

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        if request.tools and request.messages[-1].role != "tool":
            yield [ToolCallDelta(0, "call_1", "noop", ""), ToolCallDelta(0, arguments='{"x": 1}')]
            yield [Usage(10, 5), Finish("tool_calls")]
            return
        yield ANSWER
        yield [Usage(10, 20), Finish("stop")]


class NoOp(Tool):
    spec = ToolSpec("noop", "Does nothing.", {"type": "object", "properties": {"x": {"type": "integer"}}})

    async def run(self, arguments: dict[str, Any]) -> str:
        return "ok"


def _service() -> ChatService:
    registry = ModelRegistry([FakeConfig(name="scripted", provider="fake")])
    [entry] = registry.entries()
    entry.model, entry.state = ScriptedModel("scripted", None), ModelState.READY
    tools = ToolRegistry(ToolSettings(), [])
    tools.register(NoOp())
    agents = [AgentConfig(name="looper", tools=["noop"])]
    return ChatService(registry, agents, tools=tools)


async def _cpu_per_run(service: ChatService, runs: int, *, agent: str | None) -> float:
    request = ChatRequest(messages=[ChatMessage(role="user", content="go")])
    started = time.process_time()
    for _ in range(runs):
        if agent is None:  # the baseline: the same two model calls, as two plain runs
            for _step in range(2):
                run = await service.start(request)
                await run.collect()
                await run.aclose()
        else:
            run = await service.start(request, agent=agent)
            await run.collect()
            await run.aclose()
            assert run.text == "".join(piece.text for piece in ANSWER)
    return (time.process_time() - started) / runs * 1e6


async def loop_overhead(runs: int) -> None:
    service = _service()
    await _cpu_per_run(service, runs // 10, agent="looper")  # warm-up
    plain = await _cpu_per_run(service, runs, agent=None)
    looped = await _cpu_per_run(service, runs, agent="looper")
    tool = NoOp()
    started = time.process_time()
    for _ in range(runs):
        await invoke(tool, '{"x": 1}', 10)
    invoke_us = (time.process_time() - started) / runs * 1e6
    print(f"\n## Agent loop overhead ({runs} runs, 2 steps each: a tool call, then a 20-piece answer)\n")
    print("| | CPU µs per reply |")
    print("|---|---|")
    print(f"| two plain runs (baseline) | {plain:.0f} |")
    print(f"| one agent run, 2 steps | {looped:.0f} |")
    print(f"| loop overhead per step | {(looped - plain) / 2:.0f} |")
    print(f"| of which: one tool call (`invoke`, schema check, no-op tool) | {invoke_us:.0f} |")


async def mcp_latency(config: MCPServerConfig, calls: int) -> tuple[float, float]:
    server = MCPServer(config)
    server.start()
    try:
        if not await server.wait_ready(30):
            raise RuntimeError(f"MCP server did not connect: {server.last_error}")
        tool = server.tools[f"{config.name}__add"]
        for _ in range(20):
            await invoke(tool, '{"a": 1, "b": 2}', 10)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            outcome = await invoke(tool, '{"a": 1, "b": 2}', 10)
            samples.append((time.perf_counter() - started) * 1000)
            assert outcome.output == "3", outcome
        return percentile(samples, 50), percentile(samples, 99)
    finally:
        await server.aclose()


@contextlib.contextmanager
def http_mcp_server() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([*MCP_SERVER, "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # (waiting for a subprocess to listen)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.kill()
        server.wait()


async def mcp_table(http_url: str, calls: int) -> None:
    stdio = MCPServerConfig(name="s", command=MCP_SERVER[0], args=[*MCP_SERVER[1:], "stdio"])
    rows = [
        ("stdio", await mcp_latency(stdio, calls)),
        ("Streamable HTTP", await mcp_latency(MCPServerConfig(name="h", url=http_url), calls)),
    ]
    print(f"\n## MCP tool call latency ({calls} sequential calls of `add`, through Parley's client)\n")
    print("| transport | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name, (p50, p99) in rows:
        print(f"| {name} | {p50:.2f} | {p99:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(loop_overhead(args.runs))
    with http_mcp_server() as url:
        asyncio.run(mcp_table(url, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
