"""create_app(settings): the FastAPI app, with every resource owned by its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from parley.access.allow_lists import ModelAllowList
from parley.access.edge import AccessMiddleware
from parley.access.limits_setup import limits_may_apply, open_limit_gate
from parley.access.startup import open_access
from parley.access.usage import UsageRecorder, prices_of
from parley.api import admin_keys, admin_mcp, agents, chat, conversations, embeddings, health, openai, runs, ws
from parley.api import knowledge as knowledge_api
from parley.api import usage as usage_api
from parley.api.compat import chatkit, chatkit_tutor, streamforge, tether
from parley.api.draining import RefuseWhileDraining
from parley.api.error_handlers import install_error_handlers
from parley.api.middleware import RequestContextMiddleware
from parley.api.openapi_doc import document_by_hand
from parley.api.origin import CrossSiteGuard
from parley.chat.autosave import ReplyAutosave
from parley.chat.citing import Grounding
from parley.chat.service import ChatService
from parley.chat.turns import ConversationChat
from parley.config import Settings
from parley.knowledge.base import KnowledgeBase
from parley.knowledge.embedders import SharedEmbedder
from parley.knowledge.service import KnowledgeService
from parley.lifecycle import Lifecycle
from parley.models.registry import ModelRegistry
from parley.observability import Observability
from parley.observability.exposition import router as metrics_router
from parley.runs import open_run_hub
from parley.store import default_database_url, open_store
from parley.tools.registry import ToolRegistry
from parley.web import ChatPage
from parley.web import routes as web_routes


def create_app(settings: Settings, *, knowledge: KnowledgeBase | None = None) -> FastAPI:
    """`knowledge`: a knowledge base to use instead of the server's own (tests bring a small one)."""
    lifecycle = Lifecycle()
    observability = Observability(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(settings.database_url or default_database_url(settings.data_dir))
        try:  # access None: the server runs open (no keys)
            access = await open_access(settings, store.engine)
            limits = await open_limit_gate(  # (an unreachable Redis stops the start here)
                settings, keys_required=access is not None, on_refused=observability.rate_limited
            )
        except BaseException:
            await store.aclose()
            raise
        app.state.limits = limits
        # Replies left streaming by a server that stopped are marked failed; with a shared database,
        # only those no server has saved for a while (others may still be writing theirs).
        autosave = ReplyAutosave(store, settings.reply_save_seconds, shared=store.engine.dialect.name != "sqlite")
        await store.fail_interrupted(older_than=autosave.stale_after)
        autosave.start()
        registry = ModelRegistry(settings.models)
        tools = ToolRegistry(settings.tools, settings.mcp_servers)
        tools.start()  # MCP servers connect in the background; their tools appear when they are up
        usage = UsageRecorder(store, prices_of(settings.models)) if settings.record_usage else None
        # The allow-list first: a model a key may not use takes nothing from its limits.
        allow_list = ModelAllowList() if access is not None else None
        gates = [gate for gate in (allow_list, limits, usage) if gate is not None]
        chat = ChatService(
            registry, settings.agents, track=lifecycle.track, gates=gates, tools=tools, tool_settings=settings.tools
        )
        # One embedder for the server, loaded on first use: `/v1/embeddings` and the knowledge base share it.
        embedder = SharedEmbedder(settings.knowledge.embedder)
        app.state.embedder = embedder
        # Knowledge opens its index in the background, then resumes unfinished documents.
        own_knowledge = KnowledgeService(settings.knowledge, store.engine, embedder)
        own_knowledge.start()
        app.state.knowledge = own_knowledge
        app.state.tools = tools
        app.state.usage = usage
        app.state.access = access
        app.state.settings = settings
        app.state.registry = registry
        app.state.store = store
        app.state.chat = chat
        app.state.chat_page = ChatPage.from_package()
        grounding = Grounding(knowledge or own_knowledge, settings.knowledge)
        app.state.grounding = grounding
        app.state.conversation_chat = ConversationChat(chat, store, autosave, grounding)
        app.state.runs = await open_run_hub(
            settings.redis_url,
            settings.redis_prefix,
            keep_seconds=settings.run_log_seconds,
            reference_seconds=settings.run_record_seconds,
            idempotency_seconds=settings.idempotency_seconds,
        )
        await observability.start(chat, registry, store)
        # Models load in the background: /health answers at once, /ready says when they are up.
        loading = asyncio.create_task(registry.load_all())
        try:
            yield
        finally:
            await app.state.runs.aclose()  # (replies still running are saved as they end)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await observability.aclose()
            await registry.aclose()
            await tools.aclose()
            await own_knowledge.aclose()
            await embedder.aclose()
            await autosave.aclose()
            if usage is not None:
                await usage.aclose()
            if limits is not None:
                await limits.aclose()
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
    app.include_router(embeddings.router)
    app.include_router(chat.router)
    app.include_router(conversations.router)
    app.include_router(runs.router)
    app.include_router(ws.router)
    app.include_router(health.router)
    app.include_router(usage_api.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_mcp.router)
    app.include_router(agents.router)
    app.include_router(web_routes.router)  # the chat page's assets (the page: `/`, in streamforge)
    app.include_router(knowledge_api.router)
    # The source systems' routes (parley.api.compat), after Parley's own.
    app.include_router(streamforge.router)
    app.include_router(tether.router)
    app.include_router(chatkit_tutor.router)
    app.include_router(chatkit.router)
    app.include_router(metrics_router)
    app.state.lifecycle = lifecycle
    app.state.observability = observability
    app.state.access = None  # until the lifespan decides (AccessMiddleware reads it)
    app.state.limits = None  # until the lifespan decides (the request middleware reads it)
    install_error_handlers(app)
    document_by_hand(app)
    app.add_middleware(chat.ChatRoute)  # the innermost two: inside CORS and request ids
    app.add_middleware(openai.ChatCompletionsRoute)
    app.add_middleware(RefuseWhileDraining, lifecycle=lifecycle)
    app.add_middleware(AccessMiddleware)  # who is calling: decided once, before any route
    # Cross-site browser requests refused; listed origins through Starlette's CORSMiddleware.
    app.add_middleware(CrossSiteGuard, cors_origins=settings.cors_origins)
    observer = observability if observability.wanted else None
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        observer=observer,
        rate_limit_headers=limits_may_apply(settings),  # x-ratelimit-* on limited callers' responses
    )
    return app
