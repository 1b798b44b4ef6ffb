"""`POST /v1/embeddings` with the official `openai` client, over each kind of embedder."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from parley.errors import UpstreamError
from parley.knowledge.config import EmbedderConfig
from parley.knowledge.embedders import open_embedder
from tests.support.embeddings_upstream import (
    DIMENSION,
    LEAKY_ERROR,
    EmbeddingsUpstream,
    running_embeddings_upstream,
    vector_of,
)
from tests.support.server import running_parley

MODELS = [{"name": "echo", "provider": "fake"}]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def default_url() -> Iterator[str]:
    with running_parley(models=MODELS) as url:
        yield url


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmbeddingsUpstream]:
    with running_embeddings_upstream() as server:
        yield server


def test_default_wordllama_embedder_with_the_openai_client(default_url: str) -> None:
    client = openai.OpenAI(base_url=f"{default_url}/v1", api_key="unused")
    texts = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly tax returns are due."]
    reply = client.embeddings.create(model="text-embedding-3-small", input=texts)  # (the client asks for base64)
    assert reply.model == "wordllama:l2_supercat:256"
    assert [item.index for item in reply.data] == [0, 1, 2]
    vectors = [item.embedding for item in reply.data]
    assert all(len(vector) == 256 and abs(norm(vector) - 1) < 1e-3 for vector in vectors)
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])  # alike texts lie closer
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
    floats = client.embeddings.create(model="any", input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0], strict=True)) < 1e-5
    short = client.embeddings.create(model="any", input=texts[0], dimensions=64)
    assert len(short.data[0].embedding) == 64 and abs(norm(short.data[0].embedding) - 1) < 1e-3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": [1, 2, 3]}, "input"),
        ({"model": "m", "input": [[1, 2], [3]]}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": "hi", "dimensions": 4096}, "dimensions"),
        ({"model": "m", "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi"}, "model"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape(default_url: str, body: dict[str, object], param: str) -> None:
    reply = httpx.post(f"{default_url}/v1/embeddings", json=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") or param in error["message"]


def test_token_arrays_are_refused_clearly_with_the_client(default_url: str) -> None:
    client = openai.OpenAI(base_url=f"{default_url}/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError, match="token arrays are not supported"):
        client.embeddings.create(model="any", input=[[1, 2, 3]])


def test_openai_compatible_upstream_embedder(upstream: EmbeddingsUpstream) -> None:
    embedder = {"provider": "openai", "base_url": upstream.base_url, "model": "embed-small", "batch_size": 2}
    with running_parley(models=MODELS, knowledge={"embedder": embedder}) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        client.embeddings.create(model="whatever", input="first use")  # (loads the embedder: it asks its size)
        upstream.requests.clear()
        texts = [f"text number {n}" for n in range(5)]
        reply = client.embeddings.create(model="whatever", input=texts, encoding_format="float")
        assert reply.model == f"openai:{upstream.base_url}:embed-small:{DIMENSION}"
        assert [len(request["input"]) for request in upstream.requests] == [2, 2, 1]  # batch_size
        assert all(request["model"] == "embed-small" for request in upstream.requests)
        for text, item in zip(texts, reply.data, strict=True):
            expected = vector_of(text)
            scale = norm(expected)
            assert max(abs(a - b / scale) for a, b in zip(item.embedding, expected, strict=True)) < 1e-5


def test_upstream_failure_is_a_502_in_parleys_words(upstream: EmbeddingsUpstream) -> None:
    embedder = {"provider": "openai", "base_url": upstream.base_url, "model": "fail-500", "dimension": DIMENSION}
    with running_parley(models=MODELS, knowledge={"embedder": embedder}) as url:
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": "hello"}, timeout=30)
    assert reply.status_code == 502
    assert reply.json()["error"]["message"] == "the embedding upstream failed"
    assert "sk-secret" not in reply.text and "corp.example" not in reply.text and LEAKY_ERROR not in reply.text


def test_unreachable_upstream_embedder_is_a_clear_error() -> None:
    config = EmbedderConfig(provider="openai", base_url="http://127.0.0.1:9/v1", model="m", dimension=8)

    async def embed() -> None:
        embedder = await open_embedder(config)
        try:
            await embedder.embed(["hello"])
        finally:
            await embedder.aclose()

    with pytest.raises(UpstreamError, match="could not be reached"):
        asyncio.run(embed())


def test_llamacpp_embedder_with_the_bundled_smollm2() -> None:
    async def embed() -> tuple[str, int, list[list[float]], list[list[float]]]:
        embedder = await open_embedder(EmbedderConfig(provider="llamacpp", batch_size=2))
        short = await open_embedder(EmbedderConfig(provider="llamacpp", dimension=64))
        try:
            texts = ["The cat sat on the mat.", "Tax returns are due in April.", "The cat sat on the mat."]
            return embedder.name, embedder.dimension, await embedder.embed(texts), await short.embed(texts[:1])
        finally:
            await embedder.aclose()
            await short.aclose()

    name, dimension, vectors, shortened = asyncio.run(embed())
    assert name == "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf:576" and dimension == 576
    assert len(vectors) == 3 and all(len(v) == 576 and abs(norm(v) - 1) < 1e-4 for v in vectors)
    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[2], strict=True)) < 1e-4  # same text, same vector
    assert dot(vectors[0], vectors[1]) < 0.9999
    assert len(shortened[0]) == 64 and abs(norm(shortened[0]) - 1) < 1e-4


def test_embeddings_are_documented(default_url: str) -> None:
    operation = httpx.get(f"{default_url}/openapi.json").json()["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "502", "504"} <= set(operation["responses"])
    assert "422" not in operation["responses"]
    schemas = httpx.get(f"{default_url}/openapi.json").json()["components"]["schemas"]
    dimensions = schemas["EmbeddingsBody"]["properties"]["dimensions"]["anyOf"][0]
    assert dimensions["maximum"] == 256  # the embedder's
