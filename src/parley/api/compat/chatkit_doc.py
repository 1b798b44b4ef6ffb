"""The OpenAPI description of `POST /chatkit`: the requests it serves, from the `openai-chatkit` types.

The request schemas are the package's own, under `ChatKit…` names in the document's components,
narrowed to what the server accepts (a message has text and no attachments; a `type` is always
sent; at most 200 threads a page, newest first). Answers are described by their shape only: a JSON object, or
an SSE stream whose every event is a JSON object with a `type` (the package's types define them).
"""

from __future__ import annotations

from typing import Annotated, Any

from chatkit.types import (
    ItemsFeedbackReq,
    ItemsListReq,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsDeleteReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadsUpdateReq,
)
from pydantic import Field, TypeAdapter

from parley.store.inputs import MAX_TITLE_CHARS

Schema = dict[str, Any]

REQUEST_SCHEMA = "ChatKitRequest"
_PREFIX = "ChatKit"
_SERVED = Annotated[
    ThreadsCreateReq
    | ThreadsAddUserMessageReq
    | ThreadsGetByIdReq
    | ThreadsListReq
    | ItemsListReq
    | ThreadsUpdateReq
    | ThreadsDeleteReq
    | ItemsFeedbackReq,
    Field(discriminator="type"),
]
_REF = "#/components/schemas/{}"
_ERROR: Schema = {"application/json": {"schema": {"$ref": _REF.format("ErrorResponse")}}}


def request_schemas(not_whitespace: str) -> Schema:
    """Components for the served requests; `not_whitespace`: a pattern matching one character that
    is not whitespace to Python (the store refuses a blank title)."""
    schema = TypeAdapter(_SERVED).json_schema(ref_template=_REF.format(_PREFIX + "{model}"))
    schemas: Schema = {_PREFIX + name: definition for name, definition in schema.pop("$defs").items()}
    schemas[REQUEST_SCHEMA] = {"title": REQUEST_SCHEMA, **schema}
    for name, definition in schemas.items():
        if "type" in definition.get("properties", {}) and name != REQUEST_SCHEMA:
            definition["required"] = ["type", *definition.get("required", [])]
    user_input = schemas[_PREFIX + "UserMessageInput"]["properties"]
    user_input["attachments"]["maxItems"] = 0
    user_input["content"]["minItems"] = 1
    for part in ("UserMessageTextContent", "UserMessageTagContent"):
        schemas[_PREFIX + part]["properties"]["text"]["minLength"] = 1
    title = schemas[_PREFIX + "ThreadUpdateParams"]["properties"]["title"]
    title.update(maxLength=MAX_TITLE_CHARS, pattern=not_whitespace)
    listing = schemas[_PREFIX + "ThreadListParams"]["properties"]
    listing["limit"]["anyOf"][0].update(minimum=1, maximum=200)
    listing["order"] = {"const": "desc", "default": "desc", "description": "Newest first (the only order served)."}
    return schemas


def _sse_of_objects() -> Schema:
    event: Schema = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "contentMediaType": "application/json", "contentSchema": event}},
    }


OPENAPI: Schema = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF.format(REQUEST_SCHEMA)}}},
    },
    "responses": {
        "200": {
            "description": (
                "`threads.create` and `threads.add_user_message`: `text/event-stream` of ChatKit stream events "
                '(`data: {"type": …}`), as `chatkit.types.ThreadStreamEvent`. The other requests: one JSON '
                "object (a `Thread`, a `Page` of threads or items, or `{}`)."
            ),
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": _sse_of_objects()},
            },
        },
        "404": {"description": "No thread with that id, or no model with that name.", "content": _ERROR},
        "429": {"description": "The model's upstream is rate limiting (`rate_limited`).", "content": _ERROR},
        "502": {"description": "The model's upstream failed (`upstream_error`).", "content": _ERROR},
        "503": {"description": "The store or the model is unavailable.", "content": _ERROR},
        "504": {"description": "The model's upstream did not answer in time.", "content": _ERROR},
    },
}
