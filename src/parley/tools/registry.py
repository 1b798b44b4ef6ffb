"""The tools a server has: the built-in ones and those of its MCP servers, found by name or pattern."""

from __future__ import annotations

import fnmatch

from parley.tools.base import Tool
from parley.tools.calculator import Calculator
from parley.tools.config import MCPServerConfig, ToolSettings
from parley.tools.current_time import CurrentTime
from parley.tools.http_get import HttpGet
from parley.tools.mcp_client import MCPServer


class ToolRegistry:
    def __init__(self, settings: ToolSettings, mcp_servers: list[MCPServerConfig]) -> None:
        builtins: list[Tool] = [CurrentTime(), Calculator()]
        if settings.http_get_allow_hosts:
            builtins.append(HttpGet(settings.http_get_allow_hosts, settings.http_get_max_bytes))
        self._builtins = {tool.spec.name: tool for tool in builtins}
        self.servers = {config.name: MCPServer(config) for config in mcp_servers}

    def register(self, tool: Tool) -> None:
        """Offer one more tool of Parley's own (beside the built-in ones)."""
        self._builtins[tool.spec.name] = tool

    def start(self) -> None:
        """Connect to the MCP servers, each in the background (a slow one delays nothing)."""
        for server in self.servers.values():
            server.start()

    def all(self) -> dict[str, Tool]:
        tools: dict[str, Tool] = dict(self._builtins)
        for server in self.servers.values():
            tools.update(server.tools)
        return tools

    def matching(self, patterns: list[str]) -> dict[str, Tool]:
        """The tools an agent names: exact names, or patterns such as `files__*`.

        Resolved per run: an MCP server's list changes while Parley runs."""
        tools = self.all()
        return {name: tool for name, tool in tools.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}

    def states(self) -> dict[str, dict[str, object]]:
        """Each MCP server's state, for /ready."""
        return {
            name: {"state": server.state, "tools": len(server.tools), "error": server.last_error}
            for name, server in self.servers.items()
        }

    async def aclose(self) -> None:
        for server in self.servers.values():
            await server.aclose()
        for tool in self._builtins.values():
            await tool.aclose()
