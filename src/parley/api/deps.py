"""FastAPI dependencies: the app's resources, reached from the lifespan's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from parley.access.principal import principal_of
from parley.chat.service import ChatService
from parley.chat.turns import ConversationChat
from parley.knowledge.base import Embedder
from parley.knowledge.service import KnowledgeService
from parley.models.registry import ModelRegistry
from parley.runs import RunHub
from parley.store import ConversationStore
from parley.web.page import ChatPage


async def _registry(request: HTTPConnection) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def _conversation_chat(request: HTTPConnection) -> ConversationChat:
    chat: ConversationChat = request.app.state.conversation_chat
    return chat


async def _store(request: HTTPConnection) -> ConversationStore:
    store: ConversationStore = request.app.state.store
    return store


async def _run_hub(request: HTTPConnection) -> RunHub:
    hub: RunHub = request.app.state.runs
    return hub


async def _owner(request: HTTPConnection) -> str | None:
    """The caller's owner (`Principal.owner`): what the store filters conversations by."""
    return principal_of(request).owner


async def _embedder(request: HTTPConnection) -> Embedder:
    embedder: Embedder = await request.app.state.embedder.get()
    return embedder


async def _knowledge(request: HTTPConnection) -> KnowledgeService:
    knowledge: KnowledgeService = request.app.state.knowledge
    return knowledge


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
ConversationChatDep = Annotated[ConversationChat, Depends(_conversation_chat)]
StoreDep = Annotated[ConversationStore, Depends(_store)]
OwnerDep = Annotated[str | None, Depends(_owner)]
EmbedderDep = Annotated[Embedder, Depends(_embedder)]


async def _chat_page(request: HTTPConnection) -> ChatPage:
    page: ChatPage = request.app.state.chat_page
    return page


ChatPageDep = Annotated[ChatPage, Depends(_chat_page)]


async def _chat_service(request: HTTPConnection) -> ChatService:
    chat: ChatService = request.app.state.chat
    return chat


ChatServiceDep = Annotated[ChatService, Depends(_chat_service)]


RunHubDep = Annotated[RunHub, Depends(_run_hub)]


KnowledgeDep = Annotated[KnowledgeService, Depends(_knowledge)]
