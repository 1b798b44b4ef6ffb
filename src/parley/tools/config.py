"""The configuration of tools: the built-in ones' settings and the MCP servers to connect to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# An MCP server's tools are named SERVER__TOOL: a server name can't hold the separator.
ServerName = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")]


class MCPServerConfig(BaseModel):
    """An MCP server: a command Parley starts (stdio), or a URL it calls (Streamable HTTP)."""

    model_config = ConfigDict(extra="forbid")

    name: ServerName
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: Path | None = None
    url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    headers: dict[str, str] = {}
    connect_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: set either command (stdio) or url (Streamable HTTP)")
        return self


class ToolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Hosts `http_get` may fetch from; empty: the tool is not offered at all.
    http_get_allow_hosts: list[str] = []
    http_get_max_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    # A tool's result as the client's `tool_result` event shows it (the model gets up to
    # `model_result_chars`); the full length is always given.
    client_result_chars: int = Field(default=2000, ge=100)
    model_result_chars: int = Field(default=16000, ge=500)
