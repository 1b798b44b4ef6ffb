"""A real MCP server for the tests, written with the `mcp` SDK: run it over stdio or Streamable HTTP.

    python -m tests.support.mcp_server stdio
    python -m tests.support.mcp_server http PORT

Its tools: `add`, `slow` (answers after a while), `crash` (the process exits mid-call), `grow`
(adds a tool and tells the client its list changed) and `fail` (a tool error).
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("parley-test-tools", host="127.0.0.1", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after `seconds` seconds."""
    await asyncio.sleep(seconds)  # (a server that is slow to answer: what the client's timeout is for)
    return "done"


@server.tool()
def crash() -> str:
    """The server process dies in the middle of this call."""
    os._exit(3)


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ValueError("the disk is full")


@server.tool()
async def grow(ctx: Context) -> str:  # type: ignore[type-arg]
    """Add a tool named `extra`, and tell the client the list changed."""

    def extra() -> str:
        """A tool that appeared later."""
        return "extra here"

    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.settings.port = int(sys.argv[2])
        server.run("streamable-http")
