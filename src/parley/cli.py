"""The `parley` command: serve, chat with a running server, list its models."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from httpx_sse import connect_sse
from rich.console import Console
from rich.table import Table

from parley import cli_ingest, cli_usage
from parley.cli_keys import app as keys_app
from parley.cli_mcp import app as mcp_app
from parley.config import ConfigError, Settings, load_settings

app = typer.Typer(help="Parley: a streaming chat backend for LLM applications.", no_args_is_help=True)
app.add_typer(cli_usage.app, name="usage", help="A running server's usage: requests, tokens, errors and cost.")
console = Console()
errors = Console(stderr=True)
app.add_typer(keys_app, name="keys")
app.add_typer(mcp_app, name="mcp")
app.command(name="ingest")(cli_ingest.ingest)

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOption = Annotated[str, typer.Option("--url", envvar="PARLEY_URL", help="A running Parley server.")]
KeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="PARLEY_API_KEY", help="An API key, for a server that requires one.")
]


# Python's default starts a collection every 700 net allocations. A proxied stream allocates a
# few per token (each parsed chunk is a handful of dicts, nearly all freed at once by reference
# counting), so under load the collector ran several times a request and took about a sixth of
# the server's CPU (bench/overhead.py: 0.72 vs 0.88 ms a request). Cycles are still collected,
# just in fewer, larger passes.
GC_GEN0_THRESHOLD = 10_000


def _tune_garbage_collector() -> None:
    """Collect less often, and never again scan what startup built (modules, classes, the app)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar="PARLEY_CONFIG", help="A parley.toml file.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
    allow_open: Annotated[
        bool, typer.Option("--allow-open", help="Run with no API keys on a non-loopback address, deliberately.")
    ] = False,
    parent_pid: Annotated[
        int | None, typer.Option("--parent-pid", help="Exit when this process ends (a desktop app's sidecar).")
    ] = None,
) -> None:
    """Start the server. With no config, it serves the bundled SmolLM2 model."""
    from parley.access.startup import check_access
    from parley.app import create_app
    from parley.observability.json_logs import configure_logging
    from parley.serving import serve as serve_app
    from parley.sidecar import Sidecar

    try:
        settings: Settings = load_settings(config, host=host, port=port, allow_open=allow_open or None)
    except ConfigError as exc:
        errors.print(f"[red]Invalid configuration:[/red]\n{exc}", highlight=False)
        raise typer.Exit(2) from exc
    try:
        asyncio.run(check_access(settings))
    except ConfigError as exc:
        errors.print(f"[red]Refusing to start:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_format)
    models = ", ".join(f"{m.name} ({m.provider})" for m in settings.models)
    if settings.log_format == "json":  # every line a JSON object, the banner too
        logging.getLogger("parley").info("Parley on http://%s:%d; models: %s", settings.host, settings.port, models)
    else:
        errors.print(f"Parley on http://{settings.host}:{settings.port} — models: {models}", highlight=False)
    app = create_app(settings)
    _tune_garbage_collector()
    # Port 0: the system picks one, and the first line on stdout says which (see parley.sidecar).
    serve_app(app, settings, Sidecar.for_serve(announce=settings.port == 0, parent_pid=parent_pid))


@app.command()
def models(url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """List the models of a running server."""
    reply = _request("GET", f"{url}/v1/models", api_key)
    table = Table("model", "provider", "ready")
    for model in reply["data"]:
        table.add_row(model["id"], model["owned_by"].removeprefix("parley:"), "yes" if model["ready"] else "no")
    console.print(table)


@app.command()
def chat(
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the server's first).")] = None,
    agent: Annotated[str | None, typer.Option(help="A configured agent.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Continue this conversation id.")] = None,
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Send one message and exit, instead of a session.")
    ] = None,
) -> None:
    """Chat in the terminal with a running server; replies stream as they are written."""
    session = _ChatSession(url, model, agent, conversation, api_key)
    if message is not None:
        session.send(message)
        return
    errors.print(_CHAT_HELP, style="dim", highlight=False)
    if conversation is not None:
        errors.print(f"Conversation {conversation}", style="dim", highlight=False)
    while True:
        try:
            text = console.input("[bold cyan]you> [/bold cyan]").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/new":
            session.conversation = None
            errors.print("(a new conversation starts with your next message)", style="dim")
        elif text == "/id":
            current = session.conversation or "none yet: it starts with your next message"
            console.print(f"conversation: {current}", highlight=False, markup=False)
        elif text in ("/help", "/?"):
            errors.print(_CHAT_HELP, style="dim", highlight=False)
        elif text:
            session.send(text)


_CHAT_HELP = "Type a message. Commands: /id (this conversation's id), /new (a new conversation), /quit (or Ctrl-D)."


@contextlib.contextmanager
def _keys_held_back() -> Iterator[None]:
    """While a reply streams, what is typed is neither echoed into it nor sent afterwards.

    The terminal stops echoing; keys typed meanwhile are dropped when the reply ends (they were
    typed blind). Nothing changes when stdin is not a terminal (a pipe, a test).
    """
    if not sys.stdin.isatty():
        yield
        return
    import termios

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcflush(fd, termios.TCIFLUSH)
        termios.tcsetattr(fd, termios.TCSANOW, saved)


class _ChatSession:
    def __init__(
        self, url: str, model: str | None, agent: str | None, conversation: str | None, api_key: str | None = None
    ) -> None:
        self._url = url
        self._model = model
        self._agent = agent
        self.conversation = conversation
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None), headers=_auth_headers(api_key))

    def send(self, text: str) -> None:
        body = {
            "message": text,
            "model": self._model,
            "agent": self._agent,
            "conversation_id": self.conversation,
        }
        body = {key: value for key, value in body.items() if value is not None}
        try:
            with (
                _keys_held_back(),
                connect_sse(self._client, "POST", f"{self._url}/api/chat", json=body) as source,
            ):
                if source.response.status_code != 200:
                    source.response.read()
                    _fail(_error_message(source.response))
                for event in source.iter_sse():
                    self._show(event.event, json.loads(event.data))
        except httpx.TransportError as exc:
            _fail(f"cannot reach {self._url}: {exc}")
        except KeyboardInterrupt:
            console.print("\n[dim](stopped)[/dim]")

    def _show(self, name: str, data: dict[str, Any]) -> None:
        if name == "message_start":
            if self.conversation != data["conversation_id"]:
                errors.print(
                    f"(conversation {data['conversation_id']}: /id shows it, --conversation resumes it)",
                    style="dim",
                    highlight=False,
                )
            self.conversation = data["conversation_id"]
            console.print(f"[bold green]{data['model']}> [/bold green]", end="")
        elif name == "reasoning_delta":
            console.print(data["text"], end="", style="dim italic", highlight=False)
        elif name == "text_delta":
            console.print(data["text"], end="", highlight=False, markup=False)
        elif name == "tool_call":
            console.print(f"\n[yellow]tool call[/yellow] {data['name']}({data['arguments']})", highlight=False)
        elif name == "message_complete":
            usage = data.get("usage") or {}
            rate = data["timing"].get("tokens_per_second")
            detail = f"{usage.get('completion_tokens', '?')} tokens" + (f", {rate:.0f} tok/s" if rate else "")
            console.print(f"\n[dim]({data['finish_reason']}, {detail})[/dim]")
        elif name == "error":
            console.print(f"\n[red]error:[/red] {data['message']}", highlight=False)


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {} if not api_key else {"Authorization": f"Bearer {api_key}"}


def _request(method: str, url: str, api_key: str | None = None) -> dict[str, Any]:
    try:
        reply = httpx.request(method, url, timeout=10, headers=_auth_headers(api_key))
    except httpx.TransportError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if reply.status_code != 200:
        _fail(_error_message(reply))
    result: dict[str, Any] = reply.json()
    return result


def _error_message(reply: httpx.Response) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}: {reply.text[:200]}"


def _fail(message: str) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
