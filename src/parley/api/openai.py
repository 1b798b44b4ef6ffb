"""`/v1`: the OpenAI API, as the official clients use it. Stateless, like OpenAI's."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from parley.access.allow_lists import visible_models
from parley.access.edge import end_user_of, with_end_user
from parley.access.principal import OPEN, PRINCIPAL_STATE, Principal, principal_of
from parley.api.deps import RegistryDep
from parley.api.error_handlers import error_response
from parley.api.input_limits import loads_object
from parley.api.openai_wire import ChatCompletionBody, ChunkEncoder, completion
from parley.api.streaming import collect_unless_disconnected, stream_run
from parley.chat.citing import Grounding, retrieval_query
from parley.config import DEFAULT_AGENT, AgentConfig
from parley.events import Sources
from parley.models.base import ChatRequest
from parley.models.registry import ModelState

router = APIRouter(prefix="/v1", tags=["OpenAI API"])

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
AGENT_PREFIX = "agent:"  # `/v1/models` lists agents as `agent:NAME`, and a request's `model` names one so
IMPLICIT_DEFAULT_AGENT = AgentConfig(name=DEFAULT_AGENT)


class ChatCompletionsRoute:
    """`POST /v1/chat/completions`, served by the innermost middleware, ahead of FastAPI's router.

    The route every OpenAI client calls, and the hot path of a proxied stream. As a FastAPI path
    operation its per-request machinery (the request wrapper, dependency solving, validation
    through the dependency layer) cost about 150 µs a request, a sixth of all the CPU a proxied
    stream costs Parley (bench/overhead.py); as a plain route behind the router and exception
    middleware, those still cost about 5% more than this. Requests still pass the app's own
    middleware (request ids, the body limit, CORS). The body goes through the same pydantic model
    and errors through the app's own handlers, so the route answers as every other does, and
    the OpenAPI schema describes it all the same (`openapi_path`). Other requests go on.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) != CHAT_COMPLETIONS_PATH:
            await self._app(scope, receive, send)
            return
        try:
            response = await self._respond(scope, receive)
        except Exception as exc:  # (raised before anything was sent: what is sent handles its own)
            response = await error_response(Request(scope, receive), exc)
        if response is not None:
            await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive) -> Response | None:
        if scope["method"] != "POST":
            raise HTTPException(405, headers={"Allow": "POST"})
        raw = await read_body(receive)
        if raw is None:  # the client left before it finished sending
            return None
        state = scope["app"].state
        body = _validated(raw, state.settings.max_json_depth)
        principal = scope_principal(scope)
        if body.user is not None and principal.end_user is None:
            principal = with_end_user(principal, end_user_of(body.user))
        model, agent = agent_model(body.model)
        request, sources = await _grounded(state, body, agent, principal)
        knowledge = state.grounding.search_tools(principal.owner)
        run = await state.chat.start(request, model=model, agent=agent, principal=principal, knowledge=knowledge)
        run.sources = sources
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await stream_run(state.settings, run, ChunkEncoder(run, include_usage, body.parley_steps))
        await collect_unless_disconnected(run, receive)
        return JSONResponse(completion(run))


async def _grounded(
    state: Any, body: ChatCompletionBody, agent: str | None, principal: Principal
) -> tuple[ChatRequest, Sources | None]:
    """The request with the passages of its collections (`parley_collections`, and its agent's) in
    its prompt; the sources it cites."""
    request = body.to_request()
    grounding: Grounding = state.grounding
    agent_config = state.chat.agent(agent) if agent is not None else None
    searched = grounding.collections_for(body.parley_collections, agent_config)
    if not searched:
        return request, None
    users = [index for index, message in enumerate(request.messages) if message.role == "user"]
    message = request.messages[users[-1]].text() if users else ""
    query = retrieval_query(message, request.messages[: users[-1]] if users else [])
    sources = await grounding.retrieve(query, searched, principal.owner)
    return replace(request, messages=Grounding.ground(request.messages, sources)), sources


def agent_model(model: str) -> tuple[str | None, str | None]:
    """`agent:NAME` runs an agent (on its own model); any other name is a model's."""
    if model.startswith(AGENT_PREFIX):
        return None, model[len(AGENT_PREFIX) :]
    return model, None


def scope_principal(scope: Scope) -> Principal:
    principal: Principal = scope.get("state", {}).get(PRINCIPAL_STATE, OPEN)
    return principal


def route_path(scope: Scope) -> str:
    """The path as the router matches it: without the root path a proxy may have put in front."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _validated(raw: bytes, max_depth: int) -> ChatCompletionBody:
    data = loads_object(raw, max_depth=max_depth)
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
async def list_models(request: Request, registry: RegistryDep) -> dict[str, Any]:
    """The models this key may use (every model, on a server that runs open), then the agents
    (`agent:NAME`, on their own model, prompt and tools)."""
    created = int(time.time())
    principal = principal_of(request)
    allowed = set(visible_models(principal, [entry.config.name for entry in registry.entries()]))
    models = [
        {
            "id": entry.config.name,
            "object": "model",
            "created": created,
            "owned_by": f"parley:{entry.model.provider}",
            "ready": entry.state is ModelState.READY,
        }
        for entry in registry.entries()
        if entry.config.name in allowed
    ]
    ready = {model["id"]: model["ready"] for model in models}
    agents = [
        {
            "id": f"{AGENT_PREFIX}{agent.name}",
            "object": "model",
            "created": created,
            "owned_by": "parley:agent",
            "ready": ready.get(agent.model or registry.default_name, False),
        }
        for agent in request.app.state.chat.agents()
        if agent != IMPLICIT_DEFAULT_AGENT  # (the default model itself, under another name)
        and (principal.agents is None or agent.name in principal.agents)
        and (agent.model or registry.default_name) in allowed
    ]
    return {"object": "list", "data": [*models, *agents]}
