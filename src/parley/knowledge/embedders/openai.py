"""An embedder over any OpenAI-compatible `/v1/embeddings` upstream (OpenAI, Ollama, vLLM, llama-server).

Texts go up in batches of `batch_size`; the vectors come back normalised to unit length (not every
server normalises). Failures reach clients in Parley's words; the upstream's own go to the log.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import aiohttp
from yarl import URL

from parley.errors import UpstreamError, UpstreamTimeout
from parley.knowledge.config import EmbedderConfig

log = logging.getLogger("parley.knowledge")

_TIMEOUT_SECONDS = 120.0
UNREACHABLE = "the embedding upstream could not be reached"
FAILED = "the embedding upstream failed"
UNREADABLE = "the embedding upstream sent an answer Parley could not read"


class OpenAIEmbedder:
    def __init__(self, config: EmbedderConfig, dimension: int) -> None:
        if config.base_url is None or config.model is None:
            raise ValueError("openai embedder: set knowledge.embedder.base_url and knowledge.embedder.model")
        self._url = URL(config.base_url.rstrip("/") + "/embeddings")
        self._model = config.model
        self._batch_size = config.batch_size
        self._ask_dimensions = config.dimension is not None  # Matryoshka models shorten on request
        self._dimension = dimension
        self._name = f"openai:{config.base_url.rstrip('/')}:{config.model}:{dimension}"
        headers = {"Content-Type": "application/json"}
        key = _api_key(config)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS, connect=10)
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors += await self._embed_batch(texts[start : start + self._batch_size])
        return vectors

    async def _embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        body: dict[str, Any] = {"model": self._model, "input": list(texts), "encoding_format": "float"}
        if self._ask_dimensions:
            body["dimensions"] = self._dimension
        try:
            async with self._session.post(self._url, json=body) as response:
                if response.status >= 400:
                    text = (await response.text())[:500]
                    raise UpstreamError(FAILED, detail=f"{self._url} answered {response.status}: {text}")
                answer = await response.json(content_type=None)
        except TimeoutError as exc:
            raise UpstreamTimeout("the embedding upstream did not answer in time", detail=str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(UNREACHABLE, detail=f"{self._url}: {exc}") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise UpstreamError(FAILED, detail=f"{self._url}: {exc!r}") from exc
        return self._vectors(answer, len(texts))

    def _vectors(self, answer: Any, expected: int) -> list[list[float]]:
        try:
            items = sorted(answer["data"], key=lambda item: int(item["index"]))
            vectors = [[float(value) for value in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(UNREADABLE, detail=f"{self._url}: malformed answer {str(answer)[:300]}") from exc
        if len(vectors) != expected or any(len(vector) != self._dimension for vector in vectors):
            sizes = sorted({len(vector) for vector in vectors})
            raise UpstreamError(
                UNREADABLE,
                detail=f"{self._url}: {len(vectors)} vectors of sizes {sizes} for {expected} texts, "
                f"expected dimension {self._dimension}",
            )
        return [unit(vector) for vector in vectors]

    async def aclose(self) -> None:
        await self._session.close()


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return vector if norm == 0 else [value / norm for value in vector]


def _api_key(config: EmbedderConfig) -> str | None:
    if config.api_key is not None:
        return config.api_key.get_secret_value()
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if key is None:
            raise ValueError(f"openai embedder: environment variable {config.api_key_env} is not set")
        return key
    return None


async def open_embedder(config: EmbedderConfig) -> OpenAIEmbedder:
    """The upstream's embedder; without a configured dimension, one probe text finds it out."""
    if config.dimension is not None:
        return OpenAIEmbedder(config, config.dimension)
    probe = OpenAIEmbedder(config, 0)
    try:
        body = {"model": probe._model, "input": ["dimension probe"], "encoding_format": "float"}
        async with probe._session.post(probe._url, json=body) as response:
            response.raise_for_status()
            answer = await response.json(content_type=None)
        dimension = len(answer["data"][0]["embedding"])
    except (aiohttp.ClientError, TimeoutError, KeyError, IndexError, TypeError, ValueError) as exc:
        log.error("openai embedder: could not learn the dimension from %s: %r", probe._url, exc)
        raise ValueError(
            f"openai embedder: {config.base_url} did not answer an embeddings request; "
            "check base_url and model, or set knowledge.embedder.dimension"
        ) from exc
    finally:
        await probe.aclose()
    return OpenAIEmbedder(config, dimension)
