"""FastAPI dependencies: the app's resources, reached from the lifespan's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from parley.access.principal import principal_of
from parley.chat.turns import ConversationChat
from parley.knowledge.service import KnowledgeService
from parley.models.registry import ModelRegistry
from parley.store import ConversationStore


async def _registry(request: HTTPConnection) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def _conversation_chat(request: HTTPConnection) -> ConversationChat:
    chat: ConversationChat = request.app.state.conversation_chat
    return chat


async def _store(request: HTTPConnection) -> ConversationStore:
    store: ConversationStore = request.app.state.store
    return store


async def _owner(request: HTTPConnection) -> str | None:
    """The caller's owner (`Principal.owner`): what the store filters conversations by."""
    return principal_of(request).owner


async def _knowledge(request: HTTPConnection) -> KnowledgeService:
    knowledge: KnowledgeService = request.app.state.knowledge
    return knowledge


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
ConversationChatDep = Annotated[ConversationChat, Depends(_conversation_chat)]
StoreDep = Annotated[ConversationStore, Depends(_store)]
OwnerDep = Annotated[str | None, Depends(_owner)]
KnowledgeDep = Annotated[KnowledgeService, Depends(_knowledge)]
