"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from parley.api.deps import RegistryDep
from parley.models.registry import ModelState

router = APIRouter(tags=["Operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A model is still loading or failed to load."}})
async def ready(registry: RegistryDep) -> JSONResponse:
    """Every configured model is loaded; 503 with the reason otherwise."""
    models: dict[str, Any] = {}
    problems: list[str] = []
    for entry in registry.entries():
        models[entry.config.name] = {"state": entry.state.value, "error": entry.error}
        if entry.state is ModelState.LOADING:
            problems.append(f"model {entry.config.name!r} is loading")
        elif entry.state is ModelState.FAILED:
            problems.append(f"model {entry.config.name!r} failed to load: {entry.error}")
    if problems:
        return JSONResponse({"status": "unavailable", "reason": "; ".join(problems), "models": models}, 503)
    return JSONResponse({"status": "ready", "models": models})
