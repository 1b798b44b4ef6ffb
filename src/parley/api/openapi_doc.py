"""The OpenAPI document: FastAPI's, completed with what it can't see."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from parley.api import openai
from parley.api.chat_schema import stream_event_schemas


def document_by_hand(app: FastAPI) -> None:
    """Add what FastAPI can't see to the OpenAPI schema: the SSE event payloads `/api/chat` refers
    to, and `POST /v1/chat/completions`, which is a plain ASGI route."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(stream_event_schemas())
            chat_completions = openai.openapi_path()
            schemas.update(chat_completions["components"])
            schema.setdefault("paths", {}).update(chat_completions["paths"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
