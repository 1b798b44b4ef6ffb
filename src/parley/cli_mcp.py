"""`parley mcp list | refresh`: a running server's MCP servers, and a refresh of their tool lists."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The MCP servers of a running Parley.", no_args_is_help=True)
console = Console()

Url = Annotated[str, typer.Option("--url", envvar="PARLEY_URL", help="A running Parley server.")]
Key = Annotated[str | None, typer.Option("--api-key", envvar="PARLEY_ADMIN_KEY", help="The admin key.")]


@app.command("list")
def list_servers(url: Url = "http://127.0.0.1:8000", api_key: Key = None) -> None:
    """Each MCP server's state and tools."""
    _show(_call("GET", f"{url}/api/admin/mcp", api_key))


@app.command()
def refresh(url: Url = "http://127.0.0.1:8000", api_key: Key = None) -> None:
    """List every MCP server's tools again (and try a server that is down at once)."""
    _show(_call("POST", f"{url}/api/admin/mcp/refresh", api_key))


def _call(method: str, url: str, api_key: str | None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.request(method, url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        console.print(f"[red]can't reach {url}: {type(exc).__name__}[/red]")
        raise typer.Exit(1) from exc
    if reply.status_code != 200:
        message = reply.json().get("error", {}).get("message", reply.text) if reply.content else reply.reason_phrase
        console.print(f"[red]{reply.status_code}: {message}[/red]")
        raise typer.Exit(1)
    servers: list[dict[str, Any]] = reply.json()
    return servers


def _show(servers: list[dict[str, Any]]) -> None:
    if not servers:
        console.print("no MCP servers are configured")
        return
    table = Table("server", "state", "tools", "error")
    for server in servers:
        table.add_row(server["name"], server["state"], ", ".join(server["tools"]), server["error"] or "")
    console.print(table)
