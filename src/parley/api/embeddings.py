"""`POST /v1/embeddings`: OpenAI's embeddings API, served by the configured embedder.

Parley serves one embedder (`knowledge.embedder`), whatever `model` a request names: the reply's
`model` says which it is. Text only: token arrays get a 400 (the embedder has its own tokenizer).
`dimensions` shortens the vectors (then made unit length again), as Matryoshka-trained models allow.
"""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema

from parley.api.deps import EmbedderDep
from parley.api.input_limits import CheckedJSONRoute, _a_json_integer
from parley.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["OpenAI API"], route_class=CheckedJSONRoute)

MAX_INPUTS = 2048  # as OpenAI's API
MAX_INPUT_CHARS = 100_000
_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}

Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_INPUT_CHARS)]
TokenIds = Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_INPUT_CHARS)]


# An integer as JSON Schema has it (5.0 too), bounded, with the bounds in the schema.
Dimensions = Annotated[int, Field(ge=1, le=8192), BeforeValidator(_a_json_integer)]
_TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS}
# Token arrays are read (to refuse them in plain words) but not offered: the schema lists text only.
EmbeddingsInput = Annotated[
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)],
    WithJsonSchema(
        {"anyOf": [_TEXT_SCHEMA, {"type": "array", "items": _TEXT_SCHEMA, "minItems": 1, "maxItems": MAX_INPUTS}]}
    ),
]


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: EmbeddingsInput = Field(description="A text or a list of texts (non-empty); token arrays get a 400.")
    model: Annotated[StrictStr, Field(min_length=1, max_length=256)] = Field(
        description="Any name: Parley serves its configured embedder, named in the reply's `model`."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions | None = Field(
        default=None, description="Shorten each vector to this many numbers (at most the embedder's dimension)."
    )
    user: Annotated[StrictStr, Field(max_length=256)] | None = None


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or (`encoding_format: base64`) little-endian float32s.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsReply(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingsUsage


@router.post(
    "/embeddings",
    response_model=EmbeddingsReply,
    responses={
        502: {"description": "The embedding upstream failed (`upstream_error`).", "content": _ERROR_REF},
        504: {"description": "The embedding upstream timed out (`upstream_timeout`).", "content": _ERROR_REF},
    },
)
async def create_embeddings(body: EmbeddingsBody, embedder: EmbedderDep) -> EmbeddingsReply:
    """Vectors of unit length for each input text, in order."""
    texts = _texts(body.input)
    dimension = embedder.dimension
    if body.dimensions is not None and body.dimensions > dimension:
        raise InvalidRequest(
            f"dimensions must be at most {dimension}, the embedder's ({embedder.name})",
            param="dimensions",
            code="invalid_dimensions",
        )
    vectors = await embedder.embed(texts)
    if body.dimensions is not None and body.dimensions < dimension:
        vectors = [_unit(vector[: body.dimensions]) for vector in vectors]
    data = [EmbeddingOut(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(vectors)]
    tokens = _count_tokens(embedder, texts)
    usage = EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingsReply(data=data, model=embedder.name, usage=usage)


def _texts(given: Any) -> list[str]:
    if isinstance(given, str):
        return [given]
    if given and all(isinstance(item, str) for item in given):
        return list(given)
    raise InvalidRequest(
        "token arrays are not supported: send `input` as a text or a list of texts", param="input", code="invalid_input"
    )


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return vector if norm == 0 else [value / norm for value in vector]


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the official clients decode: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _count_tokens(embedder: object, texts: list[str]) -> int:
    """The embedder's own count when it has one (WordLlama), else an estimate of 4 characters a token."""
    count = getattr(embedder, "count_tokens", None)
    if callable(count):
        return int(sum(count(texts)))
    return sum(max(1, math.ceil(len(text) / 4)) for text in texts)


def document_knowledge_rules(schemas: dict[str, Any], dimension: int | None, has_knowledge: bool) -> None:
    """What this server accepts, once started: `dimensions` up to its embedder's (when known before
    it loads); `collections` only when it has a knowledge base."""
    if dimension is not None and "EmbeddingsBody" in schemas:
        dimensions = schemas["EmbeddingsBody"]["properties"]["dimensions"]
        for option in dimensions.get("anyOf", [dimensions]):
            if option.get("type") == "integer":
                option["maximum"] = dimension
    if not has_knowledge:
        for body, field in (("ChatBody", "collections"), ("ChatCompletionBody", "parley_collections")):
            if body in schemas:
                schemas[body]["properties"][field]["maxItems"] = 0
