"""create_app(settings): the FastAPI app, with every resource owned by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from parley.api import chat, health, openai
from parley.api.chat_schema import stream_event_schemas
from parley.api.error_handlers import install_error_handlers
from parley.api.middleware import RequestContextMiddleware
from parley.chat.service import ChatService
from parley.config import Settings
from parley.models.registry import ModelRegistry


def _document_stream_events(app: FastAPI) -> None:
    """Put the SSE event payloads in the OpenAPI components, where `/api/chat` refers to them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(stream_event_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings.models)
        app.state.settings = settings
        app.state.registry = registry
        app.state.chat = ChatService(registry, settings.agents)
        # Models load in the background: /health answers at once, /ready says when they are up.
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.aclose()

    app = FastAPI(
        title="Parley",
        summary="A streaming chat backend for LLM applications.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(openai.router)
    app.include_router(chat.router)
    app.include_router(health.router)
    install_error_handlers(app)
    _document_stream_events(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["x-request-id"],
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
