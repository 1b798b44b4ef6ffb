"""`/v1`: the OpenAI API, as the official clients use it. Stateless, like OpenAI's."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from parley.api.deps import RegistryDep
from parley.api.openai_wire import ChatCompletionBody, ChunkEncoder, completion
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.errors import InvalidRequest
from parley.models.registry import ModelState

router = APIRouter(prefix="/v1", tags=["OpenAI API"])

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class ChatCompletionsEndpoint:
    """`POST /v1/chat/completions`: a plain ASGI app, behind the app's middleware and error handlers.

    Not a FastAPI path operation: its per-request machinery (the request wrapper, dependency
    solving, body validation through the dependency layer) cost about 150 µs a request, a
    sixth of all the CPU a proxied stream costs Parley (bench/overhead.py), on the route every
    OpenAI client calls. The body goes through the same pydantic model here, and a bad one
    raises the same RequestValidationError, so the errors are the ones every route gives; the
    OpenAPI schema describes the route all the same (`openapi_path`).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:  # the client left before it finished sending
            return
        body = _validated(raw)
        state = scope["app"].state
        run = state.chat.start(body.to_request(), model=body.model)
        response: Response
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            response = await stream_run(state.settings, run, ChunkEncoder(run, include_usage))
        else:
            await collect_unless_disconnected(run, receive)
            response = JSONResponse(completion(run))
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _validated(raw: bytes) -> ChatCompletionBody:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {_JSON_KINDS.get(type(data), 'that')}")
    try:
        # From Python objects, as FastAPI validates bodies: the same messages as every other route.
        return ChatCompletionBody.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def openapi_path() -> dict[str, Any]:
    """The OpenAPI description of `POST /v1/chat/completions`, with the schemas it refers to."""
    schema = ChatCompletionBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components = {"ChatCompletionBody": schema, **schema.pop("$defs", {})}
    operation = {
        "tags": ["OpenAI API"],
        "summary": "Chat Completions",
        "description": (
            "OpenAI's chat completions, streamed (`stream: true`) as `chat.completion.chunk` SSE events "
            "ending in `data: [DONE]`, or answered as one `chat.completion`."
        ),
        "operationId": "chat_completions_v1_chat_completions_post",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionBody"}}},
        },
        "responses": {
            "200": {
                "description": "A `chat.completion`, or with `stream` a `text/event-stream` of chunks.",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            "400": {"description": "An invalid request, in OpenAI's error shape."},
        },
    }
    return {"paths": {CHAT_COMPLETIONS_PATH: {"post": operation}}, "components": components}


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
