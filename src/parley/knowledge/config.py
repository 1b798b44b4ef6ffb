"""The configuration of knowledge: the embedder, chunking, retrieval and ingestion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class EmbedderConfig(BaseModel):
    """The embedder: WordLlama (weights inside its wheel: works offline, no download), any
    OpenAI-compatible `/v1/embeddings` upstream, or a GGUF embedding model run by llama.cpp."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["wordllama", "openai", "llamacpp"] = "wordllama"
    model: str | None = None  # the upstream's model name (openai); WordLlama's config (wordllama)
    dimension: int | None = Field(default=None, ge=8, le=8192)  # truncate (Matryoshka) / the upstream's size
    base_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # openai
    api_key: SecretStr | None = None  # openai
    api_key_env: str | None = None  # openai: the variable holding the key
    path: Path | None = None  # llamacpp: the GGUF file
    batch_size: int = Field(default=64, ge=1, le=2048)  # texts per embed call


class KnowledgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedder: EmbedderConfig = EmbedderConfig()
    chunk_tokens: int = Field(default=256, ge=32, le=4096)  # a chunk's budget, in the embedder's tokens
    chunk_overlap_tokens: int = Field(default=32, ge=0, le=1024)  # carried over between neighbouring chunks
    top_k: int = Field(default=5, ge=1, le=50)  # a new collection's default
    max_document_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    ingest_workers: int = Field(default=1, ge=1, le=8)
    ingest_queue: int = Field(default=1000, ge=1)  # documents waiting; beyond it, uploads get 503
    context_share: float = Field(default=0.5, gt=0, le=0.9)  # of the prompt budget passages may fill
    # Retrieval: each list's shortlist, fused by reciprocal-rank fusion (score = Σ weight/(rrf_k+rank)).
    candidates: int = Field(default=50, ge=5, le=1000)
    rrf_k: int = Field(default=60, ge=1, le=1000)
    # Documents by URL: off unless the host is listed here (user input: no reaching internal hosts).
    url_allow_hosts: list[str] = Field(default_factory=list)
    url_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
