"""`/api/admin/mcp`: the MCP servers' states and tools, and a refresh of their tool lists.

The admin key only (on a server that runs open, anyone: the server trusts its loopback callers).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from parley.access.principal import principal_of
from parley.errors import PermissionDenied
from parley.tools.mcp_client import MCPServer
from parley.tools.registry import ToolRegistry

router = APIRouter(prefix="/api/admin/mcp", tags=["Admin: MCP servers"])

REFRESH_SECONDS = 10.0


async def _tools(request: Request) -> ToolRegistry:
    if request.app.state.access is not None and not principal_of(request).admin:
        raise PermissionDenied("the MCP admin API needs the admin key", code="admin_key_required")
    tools: ToolRegistry = request.app.state.tools
    return tools


ToolsDep = Annotated[ToolRegistry, Depends(_tools)]


class MCPServerOut(BaseModel):
    name: str
    state: Literal["connecting", "ready", "down", "closed"]
    error: str | None
    tools: list[str]

    @classmethod
    def of(cls, server: MCPServer) -> MCPServerOut:
        return cls(name=server.name, state=server.state, error=server.last_error, tools=sorted(server.tools))


@router.get("")
async def list_servers(tools: ToolsDep) -> list[MCPServerOut]:
    """Each configured MCP server: its state, its last error, and the tools it offers now."""
    return [MCPServerOut.of(server) for server in tools.servers.values()]


@router.post("/refresh")
async def refresh_servers(tools: ToolsDep) -> list[MCPServerOut]:
    """List every server's tools again (a server that is down is tried again at once); answers
    when each has answered, or after 10 s with the states as they are then."""
    await asyncio.gather(*(server.refreshed(REFRESH_SECONDS) for server in tools.servers.values()))
    return [MCPServerOut.of(server) for server in tools.servers.values()]
