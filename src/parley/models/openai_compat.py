"""Any OpenAI-compatible server: OpenAI, Gemini, Ollama, vLLM, llama.cpp's llama-server."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from parley.config import OpenAICompatConfig
from parley.errors import (
    InvalidRequest,
    ParleyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from parley.events import EventBatch, Finish, FinishReason, ReasoningDelta, StreamEvent, TextDelta, ToolCallDelta, Usage
from parley.logs import NO_REQUEST, current_request_id, printable
from parley.models.base import ChatRequest, Model
from parley.models.sse_decoder import SSEDecodeError, SSEDecoder

UNREADABLE = "the upstream sent a reply Parley could not read"
UNREACHABLE = "the upstream could not be reached"
BROKE_OFF = "the upstream closed the connection before the reply was finished"
ERROR_EVENT = "the upstream failed during the reply"
CUT_SHORT = "the upstream stream ended before the reply was finished"

# What of an upstream's refusal may reach the client: plain names, never free text.
_CODE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,127}")
_RETRY_AFTER = re.compile(r"[0-9]{1,10}|[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9:]{8} GMT")

log = logging.getLogger("parley.models.openai")

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAICompatModel(Model):
    """Streams from `{base_url}/chat/completions`.

    aiohttp rather than httpx: as a streaming pass-through under many concurrent streams it
    measured several times httpx's throughput on these machines.
    """

    provider = "openai"
    supports_tools = True

    def __init__(self, config: OpenAICompatConfig) -> None:
        super().__init__(config.name, config.context_size)
        if config.base_url is None:
            raise ValueError(f"model {config.name!r} has endpoints: it is served by an UpstreamPool")
        self._config = config
        # Parsed once: aiohttp would parse a string URL again for every request.
        self._url = URL(config.base_url.rstrip("/") + "/chat/completions")
        # For the log: where the upstream is, without credentials a URL may carry.
        self._where = str(self._url.with_user(None).with_query(None))
        self._session: aiohttp.ClientSession | None = None

    def _api_key(self) -> str | None:
        if self._config.api_key is not None:
            return self._config.api_key.get_secret_value()
        if self._config.api_key_env is not None:
            key = os.environ.get(self._config.api_key_env)
            if not key:
                raise ValueError(f"environment variable {self._config.api_key_env} is not set")
            return key
        return None

    async def load(self) -> None:
        headers = {"Content-Type": "application/json", **self._config.headers}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=self._config.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout,
                sock_read=self._config.read_timeout,
            ),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _body(self, request: ChatRequest) -> bytes:
        params = request.params
        body: dict[str, Any] = {
            "model": self._config.model or self.name,
            "messages": [message.to_openai() for message in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        optional = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            self._config.max_tokens_field: params.max_tokens,
            "seed": params.seed,
            "stop": params.stop or None,
            "tools": request.tools,
            "tool_choice": request.tool_choice,
            "response_format": request.response_format,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        return orjson.dumps(body)

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        if self._session is None:
            raise UpstreamError(f"model {self.name!r} is not loaded")
        try:
            request_id = current_request_id()
            # The request's id goes upstream, so the upstream's own logs can be matched with Parley's.
            headers = None if request_id == NO_REQUEST else {"x-request-id": request_id}
            async with self._session.post(self._url, data=self._body(request), headers=headers) as response:
                if response.status != 200:
                    body = await response.read()
                    raise _status_error(self.name, response.status, body, response.headers.get("Retry-After"))
                state = _StreamState()
                if response.content_type == "application/json":
                    # A server that ignores `stream` answers with the whole completion at once.
                    yield state.handle_completion(await response.read())
                else:
                    decoder = SSEDecoder()
                    async for chunk in response.content.iter_any():
                        for batch in state.batches(decoder.feed(chunk)):
                            yield batch
                        if state.done:
                            break
                    if not state.done:
                        for batch in state.batches(decoder.finish()):
                            yield batch
                yield state.close()
        except ParleyError as exc:  # an error status, an error event, or a reply that can't be read
            self._log_failure(exc)
            raise
        except (aiohttp.ClientError, TimeoutError, SSEDecodeError) as exc:
            error = self._transport_failure(exc)
            self._log_failure(error)
            raise error from exc

    def _transport_failure(self, exc: Exception) -> UpstreamError:
        """What the client is told when the connection failed; the exception itself is for the log."""
        config = self._config
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(
                "the upstream did not accept a connection in time",
                detail=f"accepted no connection within {config.connect_timeout:g} s ({what})",
            )
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"the upstream did not answer in time (nothing for {config.read_timeout:g} s)",
                detail=f"sent nothing for {config.read_timeout:g} s ({what})",
            )
        if isinstance(exc, SSEDecodeError):
            return UpstreamError(UNREADABLE, detail=str(exc))
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(UNREACHABLE, detail=f"could not be reached: {what}")
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return UpstreamError(BROKE_OFF, detail=f"broke off: {what}")
        return UpstreamError("the upstream failed", detail=f"failed: {what}")

    def _log_failure(self, error: ParleyError) -> None:
        # A refusal of the request itself (too long, rate limited) is the client's business: info.
        level = logging.INFO if error.status_code < 500 else logging.WARNING
        detail = printable(error.detail or error.message)
        log.log(level, "%s upstream %r %s [%s]", current_request_id(), self.name, detail, self._where)
        if self.listener is not None:
            self.listener.upstream_failed(self.name, failure_kind(error))


# The kinds of upstream failure metrics count, by the message Parley wrote for each.
_KIND_BY_MESSAGE = {
    UNREACHABLE: "unreachable",
    BROKE_OFF: "disconnected",
    CUT_SHORT: "disconnected",
    ERROR_EVENT: "error_event",
    UNREADABLE: "unreadable",
}


def failure_kind(error: ParleyError) -> str:
    """A small, fixed vocabulary: timeout, rate_limited, rejected, auth, not_found, unreachable,
    disconnected, error_event, unreadable or server_error."""
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, InvalidRequest):
        return "rejected"
    if error.code == "upstream_auth_failed":
        return "auth"
    if error.code == "upstream_not_found":
        return "not_found"
    return _KIND_BY_MESSAGE.get(error.message, "server_error")


class _StreamState:
    """Turns OpenAI chunk payloads into events; remembers the finish reason until the end."""

    def __init__(self) -> None:
        self.done = False
        self._finish: FinishReason | None = None
        self._failure: UpstreamError | None = None
        self._started = False  # an event has come

    def batches(self, payloads: list[bytes]) -> Iterator[list[StreamEvent]]:
        """The events of the SSE `data` payloads of one read (chunks, an error, or `[DONE]`).

        One batch, except for the read that holds the reply's first event: that event goes out
        on its own, before the rest of the read is parsed. A failure raises after the events
        before it.
        """
        while payloads:
            events, payloads = self._handle(payloads)
            if events:
                yield events
            if self._failure is not None:
                raise self._failure

    def _handle(self, payloads: list[bytes]) -> tuple[list[StreamEvent], list[bytes]]:
        events: list[StreamEvent] = []
        try:
            for position, data in enumerate(payloads):
                if data == b"[DONE]":
                    self.done = True
                    break
                self._chunk(_parse_object(data, "chunk"), events)
                if events and not self._started:
                    self._started = True
                    return events, payloads[position + 1 :]
        except UpstreamError as exc:
            self._failure = exc
        return events, []

    def handle_completion(self, body: bytes) -> list[StreamEvent]:
        """A whole `chat.completion`, read as one chunk whose delta is the message."""
        completion = _parse_object(body, "reply")
        choices = completion.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = {"delta": choices[0].get("message") or {}, "finish_reason": choices[0].get("finish_reason")}
            completion = {**completion, "choices": [choice]}
        events: list[StreamEvent] = []
        self._chunk(completion, events)
        self.done = True
        return events

    def _chunk(self, chunk: dict[str, Any], events: list[StreamEvent]) -> None:
        # One function for the whole chunk, not one per level: this runs for every token.
        if chunk.get("error"):
            raise UpstreamError(ERROR_EVENT, detail=f"sent an error: {_error_message(chunk)}")
        try:
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    # vLLM and Ollama name it `reasoning`; DeepSeek and llama-server `reasoning_content`.
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning:
                        events.append(ReasoningDelta(_text(reasoning)))
                    content = delta.get("content")
                    if content:
                        events.append(TextDelta(_text(content)))
                    tool_calls = delta.get("tool_calls")
                    if tool_calls:
                        events += _tool_call_deltas(tool_calls)
                reason = choice.get("finish_reason")
                if reason:
                    self._finish = _FINISH_REASONS.get(reason, "stop")
            usage = chunk.get("usage")
            if usage is not None:
                events.append(Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:  # JSON, not a chunk's shape
            raise UpstreamError(UNREADABLE, detail=f"sent a malformed chunk: {json.dumps(chunk)[:200]}") from exc

    def close(self) -> list[StreamEvent]:
        # Some servers send [DONE] without a finish_reason; without either, the reply was cut.
        if self._finish is None and not self.done:
            raise UpstreamError(
                CUT_SHORT,
                detail="ended its stream with neither a finish_reason nor [DONE]",
            )
        return [Finish(self._finish or "stop")]


def _tool_call_deltas(calls: list[dict[str, Any]]) -> list[StreamEvent]:
    deltas: list[StreamEvent] = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        deltas.append(
            ToolCallDelta(
                index=call.get("index", position),
                id=call.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
            )
        )
    return deltas


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"text expected, got {type(value).__name__}")
    return value


def _parse_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        # orjson: parsing every chunk is the largest per-token cost of a proxied stream.
        parsed = orjson.loads(data)
    except ValueError as exc:
        raise UpstreamError(UNREADABLE, detail=f"sent a malformed {what}: {data[:200]!r}") from exc
    if not isinstance(parsed, dict):
        raise UpstreamError(UNREADABLE, detail=f"sent a malformed {what}: {data[:200]!r}")
    return parsed


def _error_fields(payload: Any) -> dict[str, Any]:
    """The error object of an upstream's error body, whatever its shape.

    OpenAI, Ollama and llama-server nest it (`{"error": {...}}`); older vLLM sends it flat
    (`{"object": "error", "message": ...}`); FastAPI-based servers send `{"detail": ...}`.
    """
    if not isinstance(payload, dict):
        return {}
    error = payload.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if "message" in payload:
        return payload
    if "detail" in payload:
        detail = payload["detail"]
        return {"message": detail if isinstance(detail, str) else json.dumps(detail)}
    return {}


def _error_message(payload: Any) -> str:
    message = _error_fields(payload).get("message")
    return (str(message) if message else json.dumps(payload))[:500]


def _status_error(model: str, status: int, body: bytes, retry_after: str | None = None) -> ParleyError:
    """The error for an upstream's error status, in Parley's words; the upstream's own go to `detail`."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    error = _error_fields(payload)
    text = (str(error.get("message") or "") or body.decode("utf-8", errors="replace").strip())[:500]
    detail = f"answered {status}: {text or '(empty body)'}"
    if status in (400, 422):
        # The client's request was refused: keep the upstream's pointers to what was wrong
        # (e.g. code "context_length_exceeded", param "messages") when they are plain names.
        param, code = _plain(error.get("param"), _PARAM), _plain(error.get("code"), _CODE)
        if code == "context_length_exceeded" or _too_long(error, text):
            message = f"the conversation is too long for model {model!r}"
            return InvalidRequest(message, param=param or "messages", code="context_length_exceeded", detail=detail)
        message = "the upstream refused the request as invalid"
        return InvalidRequest(message, param=param, code=code or "upstream_rejected", detail=detail)
    if status in (401, 403):
        # The upstream's key is Parley's configuration, not the client's: a gateway failure.
        message = "the upstream refused the API key" if status == 401 else "the upstream refused access"
        return UpstreamError(message, code="upstream_auth_failed", detail=detail)
    if status == 404:
        # The route or the model named in Parley's configuration is not there: not the client's doing.
        return UpstreamError("the upstream has no such model or route", code="upstream_not_found", detail=detail)
    if status == 429:
        # The upstream's Retry-After tells clients (the openai client honours it) when to come back.
        headers = {"Retry-After": retry_after} if retry_after and _RETRY_AFTER.fullmatch(retry_after) else None
        return RateLimited("the upstream is rate limiting requests", headers=headers, detail=detail)
    if status in (408, 504):
        return UpstreamTimeout("the upstream did not answer in time", detail=detail)
    return UpstreamError("the upstream failed", detail=detail)


def _plain(value: Any, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _too_long(error: dict[str, Any], text: str) -> bool:
    """Whether an upstream's refusal says the prompt is over the model's context (each says it its own way)."""
    if error.get("type") == "exceed_context_size_error":  # llama-server
        return True
    lowered = text.lower()
    return "context length" in lowered or "context size" in lowered or "context window" in lowered
