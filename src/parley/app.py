"""create_app(settings): the FastAPI app, with every resource owned by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from parley.access.allow_lists import ModelAllowList
from parley.access.edge import AccessMiddleware
from parley.access.startup import open_access
from parley.api import admin_keys, chat, conversations, health, openai, ws
from parley.api.compat import chatkit, chatkit_tutor, streamforge, tether
from parley.api.draining import RefuseWhileDraining
from parley.api.error_handlers import install_error_handlers
from parley.api.middleware import RequestContextMiddleware
from parley.api.openapi_doc import document_by_hand
from parley.api.origin import CrossSiteGuard
from parley.chat.autosave import ReplyAutosave
from parley.chat.service import ChatService
from parley.chat.turns import ConversationChat
from parley.config import Settings
from parley.lifecycle import Lifecycle
from parley.models.registry import ModelRegistry
from parley.store import default_database_url, open_store


def create_app(settings: Settings) -> FastAPI:
    lifecycle = Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(settings.database_url or default_database_url(settings.data_dir))
        try:  # None: the server runs open (no keys)
            access = await open_access(settings, store.engine)
        except BaseException:
            await store.aclose()
            raise
        # Replies left streaming by a server that stopped are marked failed; with a shared database,
        # only those no server has saved for a while (others may still be writing theirs).
        autosave = ReplyAutosave(store, settings.reply_save_seconds, shared=store.engine.dialect.name != "sqlite")
        await store.fail_interrupted(older_than=autosave.stale_after)
        autosave.start()
        registry = ModelRegistry(settings.models)
        gates = [] if access is None else [ModelAllowList()]
        chat = ChatService(registry, settings.agents, track=lifecycle.track, gates=gates)
        app.state.access = access
        app.state.settings = settings
        app.state.registry = registry
        app.state.store = store
        app.state.chat = chat
        app.state.conversation_chat = ConversationChat(chat, store, autosave)
        # Models load in the background: /health answers at once, /ready says when they are up.
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.aclose()
            await autosave.aclose()
            await store.stop_repairs()
            await store.aclose()
            if access is not None:
                await access.aclose()

    # Swagger UI's and ReDoc's assets served by Parley itself (fastapi-offline): /docs works offline.
    app = FastAPIOffline(
        title="Parley",
        summary="A streaming chat backend for LLM applications.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(openai.router)
    app.include_router(chat.router)
    app.include_router(conversations.router)
    app.include_router(ws.router)
    app.include_router(health.router)
    app.include_router(admin_keys.router)
    # The source systems' routes (parley.api.compat), after Parley's own.
    app.include_router(streamforge.router)
    app.include_router(tether.router)
    app.include_router(chatkit_tutor.router)
    app.include_router(chatkit.router)
    app.state.lifecycle = lifecycle
    app.state.access = None  # until the lifespan decides (AccessMiddleware reads it)
    install_error_handlers(app)
    document_by_hand(app)
    app.add_middleware(openai.ChatCompletionsRoute)  # the innermost: inside CORS and request ids
    app.add_middleware(RefuseWhileDraining, lifecycle=lifecycle)
    app.add_middleware(AccessMiddleware)  # who is calling: decided once, before any route
    # Cross-site browser requests refused; listed origins through Starlette's CORSMiddleware.
    app.add_middleware(CrossSiteGuard, cors_origins=settings.cors_origins)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
