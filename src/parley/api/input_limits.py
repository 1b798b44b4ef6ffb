"""What a client may send: JSON parsed with limits, and the bounded, strict field types of bodies.

Bodies and WebSocket frames are parsed with orjson, which refuses NaN and Infinity, lone
surrogates (`"\\ud800"`) and nesting beyond 1024 levels. Parley refuses nesting beyond
`max_json_depth` (default 64) as well: orjson won't serialise past 254 levels when a request goes
upstream, and a tool schema or content part needs a few dozen at most. Only a body with more
brackets than the limit is walked, so ordinary bodies pay two byte counts for the check.

Integers are bounded to what every model and wire accepts (a 64-bit signed integer at most:
orjson refuses to send more upstream), and types are strict where coercion would surprise:
`true` and `"5"` are not token counts, `"no"` and `0` are not booleans, `"0.5"` is not a number.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictFloat, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from parley.errors import InvalidRequest, ParleyError
from parley.store.inputs import ID_PATTERN
from parley.store.schema import ID_LENGTH, NAME_LENGTH

MAX_TOKENS = 1_000_000  # far above any model's context; bounds what goes upstream
MAX_STOP_SEQUENCES = 4  # as OpenAI's API
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _a_json_integer(value: Any) -> Any:
    """An integer as JSON Schema has it: `5` or `5.0`, never `true` or `"5"`."""
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        # orjson reads an integer literal beyond 64 bits as a float, rounded: its value is unknown.
        if abs(value) >= 2**63:
            raise PydanticCustomError("int_too_large", "Input should be an integer within 64 bits")
        return int(value)
    return value


# Strict but for 5.0, an integer to JSON Schema; 5.5 is still refused.
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS), BeforeValidator(_a_json_integer)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX), BeforeValidator(_a_json_integer)]
Integer = Annotated[int, BeforeValidator(_a_json_integer)]
Temperature = Annotated[StrictFloat, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[StrictFloat, Field(gt=0, le=1, allow_inf_nan=False)]
Flag = StrictBool
Name = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH)]
ID_RULE = f"a conversation id is 1-{ID_LENGTH} letters, digits and . _ : - (starting with a letter or digit)"


def _check_conversation_id(value: str) -> str:
    if not is_conversation_id(value):
        raise PydanticCustomError("invalid_conversation_id", ID_RULE)
    return value


ConversationId = Annotated[
    str,
    AfterValidator(_check_conversation_id),
    # Documented, not validated, as a pattern: the check above says what is wrong in words.
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN.pattern}),
]

_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def is_conversation_id(value: str) -> bool:
    """Whether a conversation could have this id (the whole string, a trailing newline included)."""
    return ID_PATTERN.fullmatch(value) is not None


def too_deep(max_depth: int, what: str = "request body") -> InvalidRequest:
    return InvalidRequest(f"{what} is JSON nested deeper than {max_depth} levels", code="json_too_deep")


def loads(raw: bytes | str, *, max_depth: int, what: str = "request body", code: str = "invalid_json") -> Any:
    """JSON from a client, refused with a 400 (`code`, or `json_too_deep`) when it is bad or too deep."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise too_deep(max_depth, what) from None
        raise InvalidRequest(f"{what} is not valid JSON: {exc}", code=code) from None
    if _brackets(raw) > max_depth and _deeper_than(data, max_depth):
        raise too_deep(max_depth, what)
    return data


def loads_object(
    raw: bytes | str, *, max_depth: int, what: str = "request body", code: str = "invalid_json"
) -> dict[str, Any]:
    """`loads`, for bodies and frames that must be a JSON object."""
    if not raw:
        raise InvalidRequest(f"{what} is empty: send a JSON object", code=code)
    data = loads(raw, max_depth=max_depth, what=what, code=code)
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object, not {_JSON_KINDS.get(type(data), 'that')}", code=code)
    return data


def _brackets(raw: bytes | str) -> int:
    """An upper bound on the nesting depth, at the speed of a byte search."""
    if isinstance(raw, bytes):
        return raw.count(b"[") + raw.count(b"{")
    return raw.count("[") + raw.count("{")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (the top-level container is level 1).

    Recursive (twice as fast as a loop with its own stack), and safely so: it stops `limit`
    levels down, and the settings keep `limit` to 200.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return False
    return _over(value, limit)


def _over(container: Any, levels_left: int) -> bool:  # a dict or a list
    if levels_left == 0:
        return True
    for child in container.values() if type(container) is dict else container:
        kind = type(child)  # orjson makes exact dicts and lists
        if (kind is dict or kind is list) and _over(child, levels_left - 1):
            return True
    return False


class CheckedJSONRoute(APIRoute):
    """A FastAPI route whose JSON body is parsed by `loads_object`, not the stdlib's `json.loads`.

    For routers with request bodies (`APIRouter(route_class=CheckedJSONRoute)`); the OpenAPI
    document is unchanged. FastAPI turns any error but an HTTPException raised while it reads a
    body into a bare 400, so the refusal travels as one and leaves as the ParleyError it carries.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            checked_request = _CheckedJSONRequest(request.scope, request.receive)
            if not await checked_request.body():
                raise InvalidRequest("request body is empty: send a JSON object", code="invalid_json")
            try:
                return await handler(checked_request)
            except _BodyRefused as refused:
                raise refused.error from None

        return checked


class _BodyRefused(HTTPException):
    def __init__(self, error: ParleyError) -> None:
        super().__init__(error.status_code, error.message)
        self.error = error


class _CheckedJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            max_depth: int = self.app.state.settings.max_json_depth
            try:
                self._json = loads_object(await self.body(), max_depth=max_depth)
            except ParleyError as error:
                raise _BodyRefused(error) from None
        return self._json
