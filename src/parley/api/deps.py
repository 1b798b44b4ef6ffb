"""FastAPI dependencies: the app's resources, reached from the lifespan's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from parley.chat.service import ChatService
from parley.config import Settings
from parley.models.registry import ModelRegistry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def _chat(request: Request) -> ChatService:
    chat: ChatService = request.app.state.chat
    return chat


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
ChatServiceDep = Annotated[ChatService, Depends(_chat)]
