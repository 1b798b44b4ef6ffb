"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from parley.api.deps import RegistryDep, StoreDep
from parley.models.registry import ModelState

router = APIRouter(tags=["Operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "A model is still loading or failed to load."}})
async def ready(registry: RegistryDep, store: StoreDep) -> JSONResponse:
    """Every configured model is loaded and the database answers; 503 with the reason otherwise."""
    models: dict[str, Any] = {}
    problems: list[str] = []
    try:
        await store.ping()
    except Exception as exc:  # any failure to reach the database is the reason, not a 500
        problems.append(f"database unreachable: {type(exc).__name__}: {exc}")
    for entry in registry.entries():
        models[entry.config.name] = {"state": entry.state.value, "error": entry.error}
        if entry.state is ModelState.LOADING:
            problems.append(f"model {entry.config.name!r} is loading")
        elif entry.state is ModelState.FAILED:
            problems.append(f"model {entry.config.name!r} failed to load: {entry.error}")
    if problems:
        return JSONResponse({"status": "unavailable", "reason": "; ".join(problems), "models": models}, 503)
    return JSONResponse({"status": "ready", "models": models})
