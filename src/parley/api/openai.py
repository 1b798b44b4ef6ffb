"""`/v1`: the OpenAI API, as the official clients use it. Stateless, like OpenAI's."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from parley.api.deps import ChatServiceDep, RegistryDep
from parley.api.openai_wire import ChatCompletionBody, ChunkEncoder, completion
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.models.registry import ModelState

router = APIRouter(prefix="/v1", tags=["OpenAI API"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionBody, request: Request, chat: ChatServiceDep) -> Response:
    run = chat.start(body.to_request(), model=body.model)
    if not body.stream:
        await collect_unless_disconnected(run, request)
        return JSONResponse(completion(run))
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    encoder = ChunkEncoder(run, include_usage)
    return await stream_run(request, run, encoder.encode, encoder.opening(), encoder.closing, encoder.error)


@router.get("/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {
                "id": entry.config.name,
                "object": "model",
                "created": created,
                "owned_by": f"parley:{entry.model.provider}",
                "ready": entry.state is ModelState.READY,
            }
            for entry in registry.entries()
        ],
    }
