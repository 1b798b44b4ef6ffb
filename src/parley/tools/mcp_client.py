"""MCP servers as tool providers, through the official `mcp` SDK's client.

Each server is kept connected by a task of its own (the SDK's transports and sessions are
context managers that must be entered and left in one task). A lost connection (the process
died, the HTTP server went away, a ping that goes unanswered) is reconnected with backoff; while
it is down, its tools fail at once with a clear error instead of hanging a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, Literal

import anyio
import httpx
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, McpError, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp.shared.session import RequestResponder

from parley.tools.base import Tool, ToolFailed, ToolSpec
from parley.tools.config import MCPServerConfig

log = logging.getLogger("parley.mcp")

SEPARATOR = "__"
PING_SECONDS = 10.0
FIRST_RETRY_SECONDS = 0.5
LAST_RETRY_SECONDS = 30.0
ServerState = Literal["connecting", "ready", "down", "closed"]
Streams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


class MCPServer:
    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.name = config.name
        self.state: ServerState = "connecting"
        self.last_error: str | None = None
        self.tools: dict[str, MCPTool] = {}  # by Parley's name for them, SERVER__TOOL
        self._session: ClientSession | None = None
        self._wake = asyncio.Event()  # the keeper has something to do: refresh the list, or reconnect
        self._lost = False
        self._refresh = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._calls: set[anyio.CancelScope] = set()  # the calls waiting for an answer
        self._changed = asyncio.Condition()  # notified when the state or the tool list changes
        self.listings = 0  # how many times the tool list was read (a refresh waits for the next)

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name=f"mcp-{self.name}")

    async def wait_ready(self, seconds: float) -> bool:
        """Wait for the first connection attempt to end (up to `seconds`); True if it connected."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._ready.wait()
        return self.state == "ready"

    async def wait_until(self, condition: Callable[[MCPServer], bool], seconds: float) -> bool:
        """Wait up to `seconds` for the server's state or tool list to satisfy `condition`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: condition(self))
        return condition(self)

    async def _announce(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def refresh(self) -> None:
        """List the server's tools again (as on its `tools/list_changed` notification); a server
        that is down is tried again at once instead of after its backoff."""
        self._refresh = True
        self._wake.set()

    async def refreshed(self, seconds: float) -> bool:
        """Refresh, and wait up to `seconds` for the new list (False: the server did not answer)."""
        before = self.listings
        self.refresh()
        return await self.wait_until(lambda server: server.listings > before, seconds)

    async def call(self, tool: str, arguments: dict[str, Any], seconds: float) -> str:
        session = self._session
        if session is None or self.state != "ready":
            raise ToolFailed(f"the MCP server {self.name!r} is not connected ({self.last_error or self.state})")
        scope = anyio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                result = await session.call_tool(tool, arguments, read_timeout_seconds=timedelta(seconds=seconds))
            if scope.cancelled_caught:
                raise ToolFailed(f"the MCP server {self.name!r} was lost during the call ({self.last_error})")
        except McpError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                self._connection_lost("the connection closed during a call")
            raise ToolFailed(f"the MCP server {self.name!r} failed: {exc.error.message}") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._connection_lost("the connection closed during a call")
            raise ToolFailed(f"the MCP server {self.name!r} is not connected") from None
        finally:
            self._calls.discard(scope)
        text = _text_of(result)
        if result.isError:
            raise ToolFailed(text or f"the MCP tool {tool!r} reported an error")
        return text

    async def aclose(self) -> None:
        self.state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _connection_lost(self, why: str) -> None:
        if self.state == "ready":
            self.state, self.last_error = "down", why
            self._session = None
        self._lost = True
        self._wake.set()
        for call in self._calls:  # (a call the server will never answer fails now, not at its timeout)
            call.cancel()

    async def _keep_connected(self) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                async with (
                    self._transport() as (read, write),
                    ClientSession(read, write, message_handler=self._on_message) as session,
                ):
                    with anyio.fail_after(self.config.connect_timeout_seconds):
                        await session.initialize()
                        await self._list_tools(session)
                    self._session, self.state, self.last_error, self._lost = session, "ready", None, False
                    self._ready.set()
                    delay = FIRST_RETRY_SECONDS
                    log.info("MCP server %s connected: %d tools", self.name, len(self.tools))
                    await self._announce()
                    await self._serve(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # (the SDK raises exception groups from its task groups)
                self.last_error = _describe(exc)
                log.warning("MCP server %s unavailable: %s; retrying in %.1fs", self.name, self.last_error, delay)
            self._connection_lost(self.last_error or "the connection ended")
            self._session, self.state = None, "down"
            self._ready.set()  # (whoever waits for the first connection learns it failed)
            await self._announce()
            self._wake.clear()  # (set by the loss itself)
            with contextlib.suppress(TimeoutError):  # backoff between attempts, cut short by refresh()
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            delay = min(delay * 2, LAST_RETRY_SECONDS)

    async def _serve(self, session: ClientSession) -> None:
        """Until the connection is lost: refresh the tool list when asked, and ping when idle."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            if self._lost:
                return
            with anyio.fail_after(self.config.connect_timeout_seconds):
                if self._refresh:
                    self._refresh = False
                    await self._list_tools(session)
                    await self._announce()
                else:
                    await session.send_ping()

    async def _list_tools(self, session: ClientSession) -> None:
        listed: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
            listed.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                break
        self.tools = {f"{self.name}{SEPARATOR}{tool.name}": MCPTool(self, tool) for tool in listed}
        self.listings += 1

    async def _on_message(
        self,
        message: RequestResponder[types.ServerRequest, types.ClientResult] | types.ServerNotification | Exception,
    ) -> None:
        if isinstance(message, Exception):  # the transport failed (e.g. the HTTP server went away)
            self._connection_lost(_describe(message))
        elif isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self.refresh()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Streams]:
        config = self.config
        if config.command is not None:
            parameters = StdioServerParameters(
                command=config.command, args=config.args, env=config.env or None, cwd=config.cwd
            )
            async with stdio_client(parameters) as (read, write):
                yield read, write
            return
        assert config.url is not None
        timeout = httpx.Timeout(config.connect_timeout_seconds, read=None)
        async with (
            httpx.AsyncClient(headers=config.headers, timeout=timeout) as client,
            streamable_http_client(config.url, http_client=client) as (read, write, _),
        ):
            yield read, write


class MCPTool(Tool):
    def __init__(self, server: MCPServer, tool: types.Tool) -> None:
        self._server = server
        self._name = tool.name
        self.spec = ToolSpec(
            name=f"{server.name}{SEPARATOR}{tool.name}",
            description=tool.description or tool.title or tool.name,
            parameters=tool.inputSchema or {"type": "object", "properties": {}},
        )

    async def run(self, arguments: dict[str, Any]) -> str:
        # (the caller's own timeout bounds the call; this one only makes the SDK give up as well)
        return await self._server.call(self._name, arguments, seconds=300.0)


def _text_of(result: types.CallToolResult) -> str:
    texts = [part.text for part in result.content if isinstance(part, types.TextContent)]
    if texts:
        return "\n".join(texts)
    if result.structuredContent is not None:
        return orjson.dumps(result.structuredContent).decode()
    kinds = sorted({part.type for part in result.content})
    return f"[{', '.join(kinds)} content]" if kinds else ""


def _describe(exc: BaseException) -> str:
    """The first real cause of a failure, out of the exception groups anyio's task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
