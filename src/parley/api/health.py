"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from parley.api.deps import RegistryDep, StoreDep
from parley.models.registry import ModelState

router = APIRouter(tags=["Operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


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
    models: dict[str, Any] = {}
    problems: list[str] = []
    if request.app.state.lifecycle.draining:
        problems.append("shutting down")
    database = await store.readiness()
    if database is not None:
        problems.append(database)
    for entry in registry.entries():
        models[entry.config.name] = {"state": entry.state.value, "error": entry.error}
        if entry.state is ModelState.LOADING:
            problems.append(f"model {entry.config.name!r} is loading")
        elif entry.state is ModelState.FAILED:
            problems.append(f"model {entry.config.name!r} failed to load: {entry.error}")
    if problems:
        body = {"status": "unavailable", "reason": "; ".join(problems), "database": database or "ok", "models": models}
        return JSONResponse(body, 503)
    return JSONResponse({"status": "ready", "database": "ok", "models": models})
