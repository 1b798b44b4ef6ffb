"""The OpenAPI document: FastAPI's, completed with what it can't see and corrected where it would lie.

FastAPI documents a 422 `HTTPValidationError` that Parley never sends (bad input is a 400 in
OpenAI's error shape), no other error status, SSE replies as if they were one JSON body, and
none of the rules that live in validators or in the server's configuration (which models and
agents exist, what each message role needs). This module rewrites the document once, on first
request, so that it describes what the server does: the contract `tests/api_fuzz` holds it to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from parley.api import openai
from parley.api.access_doc import access_errors, add_security
from parley.api.chat_schema import stream_event_schemas
from parley.api.compat.chatkit_doc import request_schemas as chatkit_request_schemas
from parley.api.embeddings import document_knowledge_rules
from parley.api.input_limits import MAX_STOP_SEQUENCES
from parley.store.inputs import ID_PATTERN

Schema = dict[str, Any]
Operation = dict[str, Any]

ERROR_SCHEMA = "ErrorResponse"
_REF = "#/components/schemas/{}"
_CHAT_PATHS = frozenset({"/api/chat", "/chat", openai.CHAT_COMPLETIONS_PATH})
# Routes outside /api that read or write conversations (the source systems' adapters).
_STORE_PATHS = frozenset({"/chat", "/chat/history/{session_id}"})
_OPERATIONS_PATHS = frozenset({"/health", "/ready"})  # answered even while the server drains
_NULL: Schema = {"type": "null"}
_ANY_CONTENT: Schema = {"type": ["string", "array"]}
# One character Python's `str.split()` keeps: not one of the characters `str.isspace()` accepts.
_NOT_WHITESPACE = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def document_by_hand(app: FastAPI) -> None:
    """Make `app.openapi()` return the completed document (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build(), app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: Schema, app: FastAPI) -> Schema:
    """FastAPI's document, with the hand-written parts added and every operation's errors corrected."""
    schemas: Schema = schema.setdefault("components", {}).setdefault("schemas", {})
    paths: Schema = schema.setdefault("paths", {})
    schemas.update(stream_event_schemas())
    chat_completions = openai.openapi_path()
    schemas.update(chat_completions["components"])
    paths.update(chat_completions["paths"])
    schemas.update(_RESPONSE_SCHEMAS)
    schemas.update(chatkit_request_schemas(_NOT_WHITESPACE))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for path, methods in paths.items():
        for operation in methods.values():
            _document_errors(path, operation)
    _describe_successes(paths)
    _add_model_rules(schemas, paths)
    _add_server_rules(schemas, app)
    if getattr(app.state, "access", None) is not None:
        add_security(schema)
    return schema


# --- errors -------------------------------------------------------------------------------------


def _error(description: str, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(ERROR_SCHEMA)}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER: Schema = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def _document_errors(path: str, operation: Operation) -> None:
    """Every status the operation can answer with, each with the OpenAI error body; never 422."""
    responses: Schema = operation.setdefault("responses", {})
    responses.pop("422", None)
    chat = path in _CHAT_PATHS
    has_body = "requestBody" in operation
    path_ids = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"]
    reasons: dict[int, list[str]] = {}
    if has_body:
        reasons[400] = ["Invalid input: malformed JSON, wrong types, values out of range (`invalid_request_error`)."]
    elif operation.get("parameters"):
        reasons[400] = ["Invalid parameters: wrong types or values out of range (`invalid_request_error`)."]
    if path == "/api/chat":
        reasons[400].append("An unknown `agent` (`agent_not_found`), or a message too long for the model's context.")
    if chat:
        reasons[400].append("`tools` for a model that can't call tools.")
    reasons[403] = ["A browser's cross-site request from an origin `cors_origins` doesn't list (`origin_not_allowed`)."]
    if path_ids:
        reasons[404] = ["No conversation with that id (`conversation_not_found`)."]
    if chat:
        reasons[404] = ["No model with that name (`model_not_found`)."]
    if path in ("/api/chat", openai.CHAT_COMPLETIONS_PATH):
        reasons[404].append("A collection that doesn't exist or is another owner's.")
    _document_run_errors(path, reasons)
    if has_body:
        reasons[408] = ["The request body did not arrive within `body_timeout_seconds` (`request_timeout`)."]
        reasons[413] = ["The request body is larger than `max_body_bytes` (`payload_too_large`)."]
    if chat:
        reasons[429] = ["The model's upstream is rate limiting (`rate_limited`); see `Retry-After`."]
    reasons[431] = ["The request line and headers are larger than 64 KiB (`request_head_too_large`)."]
    if chat:
        reasons[502] = ["The model's upstream failed or answered nonsense (`upstream_error`)."]
    if path not in _OPERATIONS_PATHS:
        reasons[503] = ["The server is shutting down (`server_shutting_down`); see `Retry-After`."]
    if path.startswith(("/api/", "/chatkit")) or path in _STORE_PATHS:  # the stored conversations' routes
        reasons[503].append("The conversation store can't be reached (`store_unavailable`).")
    if chat:
        reasons[503].append("The model is still loading or failed to load (`model_not_ready`).")
        reasons[504] = ["The model's upstream did not answer in time (`upstream_timeout`)."]
    access_errors(path, operation, reasons, chat)
    for status, why in sorted(reasons.items()):
        headers = _RETRY_AFTER if status in (429, 503) else None
        responses.setdefault(str(status), {}).update(_error(" ".join(why), headers))


def _document_run_errors(path: str, reasons: dict[int, list[str]]) -> None:
    """The statuses of surviving runs (`parley.api.runs`): resume, cancel, and an Idempotency-Key's reuse."""
    if path == "/api/chat":
        reasons[409] = ["An `Idempotency-Key` used before for a different request (`idempotency_key_reused`)."]
    if not path.startswith("/api/runs/"):
        return
    reasons[404] = ["No run with that id, or another owner's (`run_not_found`)."]
    reasons[409] = [
        "The server running the reply stopped before it ended (`run_not_resumable`); `Location` names the "
        "conversation holding what was saved. Nothing generates it again."
    ]
    if path.endswith("/events"):
        reasons[410] = [
            "The run ended longer ago than `run_log_seconds` (`run_expired`); `Location` names the conversation "
            "holding its reply."
        ]


# --- successes ----------------------------------------------------------------------------------


def _sse_event(name: str | None, data: Schema) -> Schema:
    """One parsed SSE event (`event`, `id`, `data`) whose `data` is JSON matching `data`."""
    event: Schema = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "id": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
    }
    if name is not None:
        event["required"].append("event")
        event["properties"]["event"] = {"const": name}
    return event


_CHAT_EVENTS = {
    "message_start": "MessageStart",
    "text_delta": "TextDeltaOut",
    "reasoning_delta": "ReasoningDeltaOut",
    "tool_call": "ToolCallOut",
    "tool_call_delta": "ToolCallDeltaOut",
    "tool_result": "ToolResultOut",
    "agent_handoff": "AgentHandoffOut",
    "step": "StepOut",
    "message_complete": "MessageComplete",
    "error": "ErrorOut",
}


def _describe_successes(paths: Schema) -> None:
    chat = paths["/api/chat"]["post"]["responses"]["200"]["content"]
    # Schemathesis and OpenAPI 3.1 read an SSE media type's schema as the schema of each event.
    chat["text/event-stream"] = {
        "schema": {"oneOf": [_sse_event(name, {"$ref": _REF.format(ref)}) for name, ref in _CHAT_EVENTS.items()]}
    }
    resumed = paths["/api/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    resumed["text/event-stream"] = chat["text/event-stream"]
    completions = paths[openai.CHAT_COMPLETIONS_PATH]["post"]["responses"]["200"]["content"]
    completions["application/json"] = {"schema": {"$ref": _REF.format("ChatCompletion")}}
    chunk_or_error = {"anyOf": [{"$ref": _REF.format("ChatCompletionChunk")}, {"$ref": _REF.format(ERROR_SCHEMA)}]}
    done: Schema = {"type": "object", "required": ["data"], "properties": {"data": {"const": "[DONE]"}}}
    completions["text/event-stream"] = {"schema": {"anyOf": [done, _sse_event(None, chunk_or_error)]}}
    _json_200(paths["/v1/models"]["get"], "ModelList")
    _json_200(paths["/health"]["get"], "Health")
    _json_200(paths["/ready"]["get"], "Readiness")
    paths["/ready"]["get"]["responses"]["503"] = {
        "description": "A model is loading or failed to load, or the database can't be reached; `reason` says which.",
        "content": {"application/json": {"schema": {"$ref": _REF.format("Readiness")}}},
    }
    export = paths["/api/conversations/{conversation_id}/export"]["get"]["responses"]["200"]
    export["description"] = "The conversation as a download: JSON, or Markdown with `format=markdown`."
    export["content"] = {
        "application/json": {"schema": {"$ref": _REF.format("ConversationExport")}},
        "text/markdown": {"schema": {"type": "string"}},
    }


def _json_200(operation: Operation, name: str) -> None:
    ok = operation["responses"]["200"]
    ok["content"] = {"application/json": {"schema": {"$ref": _REF.format(name)}}}


def _object(properties: Schema, optional: tuple[str, ...] = ()) -> Schema:
    required = [name for name in properties if name not in optional]
    return {"type": "object", "required": required, "properties": properties}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, _NULL]}


_STRING: Schema = {"type": "string"}
_INTEGER: Schema = {"type": "integer"}
_FINISH = {"enum": ["stop", "length", "tool_calls", "content_filter"]}
_USAGE = _object({"prompt_tokens": _INTEGER, "completion_tokens": _INTEGER, "total_tokens": _INTEGER})
_TOOL_CALL = _object(
    {
        "id": _STRING,
        "type": {"const": "function"},
        "function": _object({"name": _STRING, "arguments": _STRING}),
    }
)
_TOOL_CALL_DELTA = _object(
    {
        "index": _INTEGER,
        "id": _STRING,
        "type": {"const": "function"},
        "function": _object({"name": _STRING, "arguments": _STRING}, optional=("name",)),
    },
    optional=("id", "type"),
)
_ENDPOINT_STATE = _object(
    {
        "name": _STRING,
        "state": {"enum": ["healthy", "cooling", "probing"]},
        "outstanding": _INTEGER,
        "weight": {"type": "number"},
        "max_concurrent": _nullable(_INTEGER),
        "cooldown_left": {"type": "number", "description": "Seconds until a request probes it again."},
        "failures": {"type": "object", "additionalProperties": _INTEGER},
        "served": _INTEGER,
    }
)
_MODEL_STATE = _object(
    {
        "state": {"enum": ["loading", "ready", "failed"]},
        "error": _nullable(_STRING),
        "endpoints": {"type": "array", "items": _ENDPOINT_STATE, "description": "A pooled model's endpoints."},
    },
    optional=("endpoints",),
)

_RESPONSE_SCHEMAS: Schema = {
    ERROR_SCHEMA: {
        "title": ERROR_SCHEMA,
        "description": "Every error, on every route, in OpenAI's shape.",
        **_object(
            {
                "error": _object(
                    {
                        "message": _STRING,
                        "type": _STRING,
                        "param": _nullable(_STRING),
                        "code": _nullable(_STRING),
                    }
                )
            }
        ),
    },
    "ChatCompletion": {
        "title": "ChatCompletion",
        **_object(
            {
                "id": _STRING,
                "object": {"const": "chat.completion"},
                "created": _INTEGER,
                "model": _STRING,
                "choices": {
                    "type": "array",
                    "items": _object(
                        {
                            "index": _INTEGER,
                            "message": _object(
                                {
                                    "role": {"const": "assistant"},
                                    "content": _nullable(_STRING),
                                    "reasoning_content": _nullable(_STRING),
                                    "tool_calls": {"type": "array", "items": _TOOL_CALL},
                                },
                                optional=("reasoning_content", "tool_calls"),
                            ),
                            "logprobs": _NULL,
                            "finish_reason": _FINISH,
                        }
                    ),
                },
                "usage": _nullable(_USAGE),
            }
        ),
    },
    "ChatCompletionChunk": {
        "title": "ChatCompletionChunk",
        "description": "One `data:` event of a streamed reply; with `stream_options.include_usage`, a last one "
        "with no choices carries `usage`.",
        **_object(
            {
                "id": _STRING,
                "object": {"const": "chat.completion.chunk"},
                "created": _INTEGER,
                "model": _STRING,
                "system_fingerprint": _NULL,
                "choices": {
                    "type": "array",
                    "items": _object(
                        {
                            "index": _INTEGER,
                            "delta": _object(
                                {
                                    "role": {"const": "assistant"},
                                    "content": _STRING,
                                    "reasoning_content": _STRING,
                                    "tool_calls": {"type": "array", "items": _TOOL_CALL_DELTA},
                                },
                                optional=("role", "content", "reasoning_content", "tool_calls"),
                            ),
                            "logprobs": _NULL,
                            "finish_reason": _nullable(_FINISH),
                        }
                    ),
                },
                "usage": _nullable(_USAGE),
            },
            optional=("system_fingerprint", "usage"),
        ),
    },
    "ModelList": {
        "title": "ModelList",
        **_object(
            {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": _object(
                        {
                            "id": _STRING,
                            "object": {"const": "model"},
                            "created": _INTEGER,
                            "owned_by": _STRING,
                            "ready": {"type": "boolean"},
                        }
                    ),
                },
            }
        ),
    },
    "Readiness": {
        "title": "Readiness",
        **_object(
            {
                "status": {"enum": ["ready", "unavailable"]},
                "reason": _STRING,
                "database": {"type": "string", "description": "`ok`, or what is wrong with it."},
                "models": {"type": "object", "additionalProperties": _MODEL_STATE},
            },
            optional=("reason", "database"),
        ),
    },
    "ConversationExport": {
        "title": "ConversationExport",
        "description": "The conversation with every message, as stored.",
        "type": "object",
    },
}


# --- rules the models keep in validators ---------------------------------------------------------


def _add_model_rules(schemas: Schema, paths: Schema) -> None:
    # The validator of ChatMessage: what each role needs besides `role`.
    schemas["ChatMessage"]["anyOf"] = [
        _role_needs(["system", "developer", "user"], content=_ANY_CONTENT),
        _role_needs(["assistant"], content=_ANY_CONTENT),
        _role_needs(["assistant"], tool_calls={"type": "array"}),
        _role_needs(["tool"], content=_ANY_CONTENT, tool_call_id={"type": "string", "minLength": 1}),
    ]
    # The stop validator of ChatCompletionBody.
    for branch in schemas["ChatCompletionBody"]["properties"]["stop"]["anyOf"]:
        if branch.get("type") == "array":
            branch["maxItems"] = MAX_STOP_SEQUENCES
    # A title is trimmed and its spaces collapsed before it is stored: it needs something else.
    schemas["Rename"]["properties"]["title"]["pattern"] = _NOT_WHITESPACE
    # Conversation ids, as the store accepts them (ECMA and Python read this pattern alike).
    for branch in schemas["ChatBody"]["properties"]["conversation_id"]["anyOf"]:
        if branch.get("type") == "string":
            branch["pattern"] = ID_PATTERN.pattern
    for methods in paths.values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "conversation_id":
                    parameter["schema"]["pattern"] = ID_PATTERN.pattern


def _role_needs(roles: list[str], **properties: Schema) -> Schema:
    return {
        "properties": {"role": {"enum": roles}, **properties},
        "required": ["role", *properties],
    }


# --- rules of this server's configuration -------------------------------------------------------


def _add_server_rules(schemas: Schema, app: FastAPI) -> None:
    """Which models and agents exist, and which models take `tools`: known once the app has started."""
    registry = getattr(app.state, "registry", None)
    settings = getattr(app.state, "settings", None)
    if registry is None or settings is None:
        return
    entries = registry.entries()
    models: Schema = {"enum": [entry.config.name for entry in entries]}
    agents: Schema = {"enum": [agent.name for agent in settings.agents]}
    chat = schemas["ChatBody"]["properties"]
    chat["model"]["anyOf"] = [{"type": "string", **models}, _NULL]
    chat["agent"]["anyOf"] = [{"type": "string", **agents}, _NULL] if agents["enum"] else [_NULL]
    completions = schemas["ChatCompletionBody"]
    completions["properties"]["model"] = {**completions["properties"]["model"], **models}
    grounding = getattr(app.state, "grounding", None)
    knowledge = grounding is not None and grounding.knowledge is not None
    embedder = getattr(app.state, "embedder", None)
    document_knowledge_rules(schemas, embedder.dimension_hint if embedder is not None else None, knowledge)
    without_tools = [entry.config.name for entry in entries if not entry.model.supports_tools]
    if without_tools:
        completions["allOf"] = [
            {
                "if": {"properties": {"model": {"enum": without_tools}}},
                "then": {"properties": {"tools": {"anyOf": [_NULL, {"type": "array", "maxItems": 0}]}}},
            }
        ]
