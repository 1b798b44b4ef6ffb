"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from parley.api.deps import RegistryDep, StoreDep
from parley.models.registry import ModelState
from parley.tools.registry import ToolRegistry

router = APIRouter(tags=["Operations"])

VERSION = version("parley")


class Health(BaseModel):
    """`GET /health`: the process is up. The fields of every system Parley replaces are here too:
    StreamForge's (`service`, `version`), Tether's (`model_loaded`) and the ChatKit tutor's
    (`provider`, `timestamp`); `status` is `healthy` for all of them."""

    status: Literal["healthy"] = "healthy"
    service: str = "parley"
    version: str = VERSION
    model: str = Field(description="The default model.")
    provider: str = Field(description="The default model's provider: llamacpp, openai or fake.")
    model_loaded: bool = Field(description="The default model is loaded and answering.")
    timestamp: str = Field(description="The server's time, ISO 8601 in UTC (`Z`).")


@router.get("/health")
async def health(registry: RegistryDep) -> Health:
    """The process is up and answering (whether or not its models are ready: see `/ready`)."""
    entry = registry.get(None)
    return Health(
        model=entry.config.name,
        provider=entry.model.provider,
        model_loaded=entry.state is ModelState.READY,
        timestamp=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


@router.get(
    "/ready",
    responses={
        503: {
            "description": (
                "Not ready, with the reason: the server is shutting down, a model is loading or failed to "
                "load, or the database is unreachable or without Parley's schema (which the server sets "
                "up again by itself)."
            )
        }
    },
)
async def ready(request: Request, registry: RegistryDep, store: StoreDep) -> JSONResponse:
    """Every configured model is loaded and the database serves; 503 with the reason otherwise.

    The database's reason names the component only ("database unreachable", "database schema
    missing"); its URL, host and the driver's words go to the server log.
    """
    tools: ToolRegistry = request.app.state.tools
    models: dict[str, Any] = {}
    problems: list[str] = []
    if request.app.state.lifecycle.draining:
        problems.append("shutting down")
    database = await store.readiness()
    if database is not None:
        problems.append(database)
    for entry in registry.entries():
        models[entry.config.name] = {"state": entry.state.value, "error": entry.error}
        endpoints = entry.model.endpoints()
        if endpoints is not None:  # a pool: each endpoint's state (a resting one doesn't make it unready)
            models[entry.config.name]["endpoints"] = [asdict(endpoint) for endpoint in endpoints]
        if entry.state is ModelState.LOADING:
            problems.append(f"model {entry.config.name!r} is loading")
        elif entry.state is ModelState.FAILED:
            problems.append(f"model {entry.config.name!r} failed to load: {entry.error}")
    # An MCP server that is down fails its tools with an error the model sees; the instance still serves.
    mcp = {name: {"state": server.state, "tools": len(server.tools)} for name, server in tools.servers.items()}
    if problems:
        body = {
            "status": "unavailable",
            "reason": "; ".join(problems),
            "database": database or "ok",
            "models": models,
            "mcp_servers": mcp,
        }
        return JSONResponse(body, 503)
    return JSONResponse({"status": "ready", "database": "ok", "models": models, "mcp_servers": mcp})
