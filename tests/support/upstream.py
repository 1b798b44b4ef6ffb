"""A real OpenAI-compatible upstream on 127.0.0.1, scripted by the `model` a request names.

It runs an aiohttp web server on its own event loop in a background thread, records every
request it receives, and notes whether the client closed the connection before the scripted
answer was complete (so tests can assert that cancelling a run stops the upstream).

Scripts (the upstream `model` name):

- `text`: "Hello from the upstream." in five pieces; `max_tokens` cuts it short with
  finish_reason "length"; a usage chunk when `stream_options.include_usage` is set.
- `tools`: two streamed tool calls (id and name first, then argument fragments).
- `reasoning` / `reasoning-field`: reasoning deltas (as `reasoning_content` / `reasoning`), then text.
- `ragged`: RAGGED_PIECES as CRLF-framed SSE with comments, `event:`/`id:` fields and one
  event split over two `data:` lines, written a few bytes at a time (splitting UTF-8 characters).
- `stall`: one piece, silence for `stall_seconds`, then the rest.
- `silent`: response headers, then silence for a long time (no event at all).
- `hang`: one piece, then silence for a long time.
- `slow`: a long stream of pieces, paced, that only a cancelling client cuts short.
- `error-mid`: one piece, then `data: {"error": {...}}`.
- `drop`: one piece, then the connection is closed mid-body (no [DONE], no chunk terminator).
- `cut`: one piece, then a cleanly ended body with neither finish_reason nor [DONE].
- `malformed`: one piece, then a chunk that is not JSON.
- `wrong-shape`: one piece, then a JSON chunk whose `content` is an object.
- `json-only`, `json-tools`: a whole `chat.completion` JSON body, as a server that ignores
  `stream` answers.
- `status-400`, `status-401`, `status-429`, `status-500`: that status with an OpenAI error body;
  `status-400-flat`, `status-503-detail`, `status-502-html`: error bodies of other shapes.
- `status-401-leaky`, `status-403`, `status-404`, `status-400-leaky`, `status-500-leaky`,
  `error-mid-leaky`: error texts carrying a key, an internal host, project and model names
  (LEAKY_TEXTS) that must stay inside Parley; `status-400-context`: llama-server's
  context-size refusal.
- (Parley model `unaccepting`): a port whose listen backlog is full, so connecting times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.agent_plans import PLANS

TEXT_PIECES = ["Hello", " from", " the", " upstream", "."]
TEXT_REPLY = "".join(TEXT_PIECES)
PROMPT_TOKENS = 11

# (id, name, argument fragments) of each streamed tool call
TOOL_CALLS: list[tuple[str, str, list[str]]] = [
    ("call_weather_1", "get_weather", ['{"city": ', '"Paris"', "}"]),
    ("call_time_2", "get_time", ['{"tz": "CET"}']),
]
# Non-ASCII text, sent by `ragged` in small writes that split lines and characters.
RAGGED_PIECES = ["Grüße, ", "世界 ", "🌍!"]
REASONING_PIECES = ["Six times seven", " is forty-two."]
REASONING_ANSWER = "42"


def _openai_error(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# script name: (status, body); a str body is sent as text/html, anything else as JSON
ERROR_REPLIES: dict[str, tuple[int, Any]] = {
    "status-400": (
        400,
        _openai_error(
            "This model's maximum context length is 4096 tokens.",
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        ),
    ),
    "status-401": (401, _openai_error("Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")),
    "status-429": (429, _openai_error("Rate limit reached for requests.", "requests", None, "rate_limit_exceeded")),
    "status-500": (500, _openai_error("The server had an error.", "server_error", None, None)),
    # older vLLM: the error object is the whole body, and its code is the status number
    "status-400-flat": (
        400,
        {"object": "error", "message": "max_tokens must be at least 1.", "type": "BadRequestError", "code": 400},
    ),
    # FastAPI-based servers
    "status-503-detail": (503, {"detail": "Model is still loading."}),
    # a proxy in front of the upstream
    "status-502-html": (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    # error texts that carry what must stay inside Parley (LEAKY_TEXTS)
    "status-401-leaky": (
        401,
        _openai_error(
            "Incorrect API key provided: sk-li****9876. internal-host=10.1.2.3",
            "invalid_request_error",
            None,
            "invalid_api_key",
        ),
    ),
    "status-403": (
        403,
        _openai_error("Project proj_internal42 has no access to this model.", "invalid_request_error", None, None),
    ),
    "status-404": (
        404,
        _openai_error(
            "The model `gpt-internal-7` does not exist or you do not have access to it.",
            "invalid_request_error",
            None,
            "model_not_found",
        ),
    ),
    # param and code that are not plain names, and a message naming a host
    "status-400-leaky": (
        400,
        _openai_error(
            "Invalid content: shard internal-host=10.1.2.3 refused it.",
            "invalid_request_error",
            "messages; internal-host=10.1.2.3",
            "invalid value at internal-host=10.1.2.3",
        ),
    ),
    # llama-server: a prompt over the context, said its own way
    "status-400-context": (
        400,
        {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 5000,
                "n_ctx": 4096,
            }
        },
    ),
    "status-500-leaky": (
        500,
        'Traceback (most recent call last):\n  File "/srv/internal/app.py", line 7\nOSError: internal-host=10.1.2.3',
    ),
}

# Words of the `*-leaky`, `status-403` and `status-404` scripts (and `error-mid-leaky`) that no client may see.
LEAKY_TEXTS = ["sk-li", "9876", "10.1.2.3", "internal-host", "proj_internal42", "gpt-internal-7", "/srv/internal"]

SCRIPTS = [
    *("text", "tools", "reasoning", "reasoning-field", "ragged", "json-only", "json-tools", "echo-raw"),
    *("stall", "silent", "hang", "slow"),
    *("error-mid", "drop", "cut", "malformed", "wrong-shape"),
    *ERROR_REPLIES,
    "error-mid-leaky",
]


@dataclass
class SeenRequest:
    """One request the upstream received, and what became of its answer."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    chunks_sent: int = 0
    completed: bool = False  # the whole scripted answer was sent
    client_closed: bool = False  # the client went away before the answer was complete
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def model(self) -> str:
        return str(self.body.get("model"))

    @property
    def last_user_text(self) -> str:
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):
            return "".join(part.get("text") or "" for part in content)
        return str(content)

    def wait_ended(self, timeout: float = 15.0) -> bool:
        return self.ended.wait(timeout)


def _reply(model: str, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "chatcmpl-upstream", "object": kind, "created": 1700000000, "model": model, "choices": choices}


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _reply(model, "chat.completion.chunk", [choice])


def _usage_chunk(model: str, completion_tokens: int) -> dict[str, Any]:
    return {**_reply(model, "chat.completion.chunk", []), "usage": _usage(completion_tokens)}


def _whole_completion(model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if model == "json-tools":
        message["content"] = None
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": "".join(pieces)}}
            for call_id, name, pieces in TOOL_CALLS
        ]
    else:
        message["content"] = REASONING_ANSWER
        message["reasoning_content"] = "".join(REASONING_PIECES)
    finish = "tool_calls" if model == "json-tools" else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {**_reply(model, "chat.completion", [choice]), "usage": _usage(3)}


class _Answer:
    """Writes one streamed answer, counting what was sent and noticing a client that left."""

    def __init__(self, response: web.StreamResponse, seen: SeenRequest) -> None:
        self._response = response
        self.seen = seen
        self.model = seen.model

    async def raw(self, data: bytes) -> None:
        await self._response.write(data)
        self.seen.chunks_sent += 1

    async def send(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.raw(f"data: {text}\n\n".encode())

    async def delta(self, delta: dict[str, Any], finish: str | None = None) -> None:
        await self.send(_chunk(self.model, delta, finish))

    async def end(self, completion_tokens: int) -> None:
        options = self.seen.body.get("stream_options") or {}
        if options.get("include_usage"):
            await self.send(_usage_chunk(self.model, completion_tokens))
        await self.send("[DONE]")


class Upstream:
    """The scripted upstream server; `base_url` has no `/v1` suffix."""

    def __init__(self, *, stall_seconds: float = 1.5, slow_interval: float = 0.02, slow_pieces: int = 2000) -> None:
        self.stall_seconds = stall_seconds
        self.slow_interval = slow_interval
        self.slow_pieces = slow_pieces
        self.requests: list[SeenRequest] = []
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstream", daemon=True)
        self._runner: web.AppRunner | None = None
        self._unaccepting: list[socket.socket] = []
        self.base_url = ""
        self.unaccepting_port = 0

    # -- lifecycle (called from the test thread) --

    def start(self) -> None:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.base_url = f"http://127.0.0.1:{port}"
        self._unaccepting = unaccepting_listener()
        self.unaccepting_port = int(self._unaccepting[0].getsockname()[1])

    def stop(self) -> None:
        for sock in self._unaccepting:
            sock.close()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        # handler_cancellation: a client that closes its connection cancels the handler,
        # which is how the upstream notices a cancelled run even while it is silent.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        address = self._runner.addresses[0]
        return int(address[1])

    # -- what the tests ask --

    def find(self, marker: str, timeout: float = 15.0) -> SeenRequest:
        """The request whose last user message contains `marker`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for seen in self.requests:
                    if marker in seen.last_user_text:
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the upstream never received a request with {marker!r}")
                self._changed.wait(left)

    def parley_models(self, read_timeout: float = 10.0) -> list[dict[str, Any]]:
        """Parley model configs: one per script, plus a few with special settings."""
        v1 = self.base_url + "/v1"
        models: list[dict[str, Any]] = [
            {"name": name, "provider": "openai", "base_url": v1, "read_timeout": read_timeout} for name in SCRIPTS
        ]
        models += [
            # Parley's name differs from the upstream's; the upstream has a key and a custom header.
            {
                "name": "keyed",
                "provider": "openai",
                "base_url": v1,
                "model": "text",
                "api_key": "sk-upstream-secret",
                "headers": {"X-Org": "parley-tests"},
            },
            {
                "name": "reasoner",
                "provider": "openai",
                "base_url": v1,
                "model": "text",
                "max_tokens_field": "max_completion_tokens",
            },
            {"name": "stall-timeout", "provider": "openai", "base_url": v1, "model": "stall", "read_timeout": 0.5},
            {"name": "silent-timeout", "provider": "openai", "base_url": v1, "model": "silent", "read_timeout": 0.5},
            # silent for longer than any test waits: only a cancellation ends it early
            {"name": "silent-long", "provider": "openai", "base_url": v1, "model": "silent", "read_timeout": 120},
            {"name": "unreachable", "provider": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1"},
            {
                "name": "unaccepting",
                "provider": "openai",
                "base_url": f"http://127.0.0.1:{self.unaccepting_port}/v1",
                "connect_timeout": 0.5,
            },
        ]
        return models

    # -- the server side (runs on the upstream loop) --

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen = SeenRequest(path=request.path, headers=dict(request.headers), body=body)
        with self._changed:
            self.requests.append(seen)
            self._changed.notify_all()
        try:
            return await self._answer(request, seen)
        finally:
            seen.ended.set()

    async def _answer(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        model = seen.model
        if model in ERROR_REPLIES:
            status, error = ERROR_REPLIES[model]
            headers = {"Retry-After": "7"} if status == 429 else None
            seen.completed = True
            if isinstance(error, str):
                return web.Response(text=error, status=status, content_type="text/html", headers=headers)
            return web.json_response(error, status=status, headers=headers)
        if model in ("json-only", "json-tools"):
            seen.completed = True
            return web.json_response(_whole_completion(model))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        answer = _Answer(response, seen)
        try:
            await self._script(answer, request)
        except (asyncio.CancelledError, ConnectionError):
            seen.client_closed = not seen.completed
            raise
        return response

    async def _script(self, answer: _Answer, request: web.Request) -> None:
        model = answer.model
        body = answer.seen.body
        if model == "text":
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            pieces = TEXT_PIECES[:limit] if limit else TEXT_PIECES
            await answer.delta({"role": "assistant", "content": ""})
            for piece in pieces:
                await answer.delta({"content": piece})
            await answer.delta({}, "length" if len(pieces) < len(TEXT_PIECES) else "stop")
            await answer.end(len(pieces))
        elif model == "tools":
            await answer.delta({"role": "assistant", "content": None})
            for index, (call_id, name, pieces) in enumerate(TOOL_CALLS):
                function = {"name": name, "arguments": ""}
                opening = {"index": index, "id": call_id, "type": "function", "function": function}
                await answer.delta({"tool_calls": [opening]})
                for piece in pieces:
                    await answer.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            await answer.delta({}, "tool_calls")
            await answer.end(9)
        elif model in ("reasoning", "reasoning-field"):
            name = "reasoning_content" if model == "reasoning" else "reasoning"
            await answer.delta({"role": "assistant", "content": ""})
            for piece in REASONING_PIECES:
                await answer.delta({name: piece})
            await answer.delta({"content": REASONING_ANSWER})
            await answer.delta({}, "stop")
            await answer.end(6)
        elif model == "echo-raw":
            # The last user message comes back as the reply's raw content, in 5-character
            # pieces that split special tokens: how a server that doesn't parse Harmony streams it.
            text = answer.seen.last_user_text
            await answer.delta({"role": "assistant", "content": ""})
            for start in range(0, len(text), 5):
                await answer.delta({"content": text[start : start + 5]})
            await answer.delta({}, "stop")
            await answer.end(len(text) // 4)
        elif model == "ragged":
            await self._ragged(answer)
        elif model == "stall":
            await answer.delta({"role": "assistant", "content": "Thinking"})
            await asyncio.sleep(self.stall_seconds)
            await answer.delta({"content": " done"})
            await answer.delta({}, "stop")
            await answer.end(2)
        elif model == "silent":
            await asyncio.sleep(60)
        elif model == "hang":
            await answer.delta({"role": "assistant", "content": "Waiting"})
            await asyncio.sleep(60)
        elif model == "slow":
            await answer.delta({"role": "assistant", "content": ""})
            for _ in range(self.slow_pieces):
                await answer.delta({"content": "tick "})
                await asyncio.sleep(self.slow_interval)
            await answer.delta({}, "stop")
            await answer.end(self.slow_pieces)
        elif model in PLANS:
            await PLANS[model](answer, body)
        else:
            await self._broken(answer, request)
            return
        answer.seen.completed = True

    async def _ragged(self, answer: _Answer) -> None:
        events = [json.dumps(_chunk(answer.model, {"role": "assistant", "content": ""}))]
        events += [json.dumps(_chunk(answer.model, {"content": piece})) for piece in RAGGED_PIECES]
        events += [json.dumps(_chunk(answer.model, {}, "stop")), "[DONE]"]
        stream = ": upstream keep-alive\r\n\r\n"
        for number, data in enumerate(events):
            if number == 2:  # one event's JSON over two data lines, which SSE joins with "\n"
                middle = data.index(", ")
                stream += f"data: {data[: middle + 1]}\r\ndata: {data[middle + 2 :]}\r\n\r\n"
            else:
                stream += f"event: chunk\r\nid: {number}\r\ndata: {data}\r\n\r\n"
        raw = stream.encode()
        for start in range(0, len(raw), 5):
            await answer.raw(raw[start : start + 5])
            await asyncio.sleep(0.001)

    async def _broken(self, answer: _Answer, request: web.Request) -> None:
        await answer.delta({"role": "assistant", "content": "Partial"})
        if answer.model == "error-mid":
            error = {"message": "The upstream model crashed.", "type": "server_error", "code": "model_crashed"}
            await answer.send({"error": error})
        elif answer.model == "error-mid-leaky":
            leaky = {"message": "worker internal-host=10.1.2.3 ran out of memory", "type": "server_error"}
            await answer.send({"error": leaky})
        elif answer.model == "wrong-shape":
            await answer.delta({"content": {"text": "not a string"}})
            await answer.send("[DONE]")
        elif answer.model == "malformed":
            await answer.raw(b'data: {"choices": [oops\n\n')
            await answer.send("[DONE]")
        elif answer.model == "drop":
            answer.seen.completed = True
            assert request.transport is not None
            request.transport.close()  # mid-body: no [DONE], no chunked terminator
            return
        elif answer.model != "cut":
            raise AssertionError(f"no script for model {answer.model!r}")
        answer.seen.completed = True


def new_marker() -> str:
    """A unique user message, by which the upstream's record of the request is found."""
    return f"question {uuid.uuid4().hex}"


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unaccepting_listener() -> list[socket.socket]:
    """A listening socket whose accept queue is already full, and the sockets filling it.

    Linux drops further SYNs to such a port, so a client's connect attempt hangs until its
    own connect timeout: an upstream host that is up but not answering.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    sockets = [listener]
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(listener.getsockname())
        sockets.append(filler)
    return sockets


@contextlib.contextmanager
def running_upstream(**options: Any) -> Iterator[Upstream]:
    upstream = Upstream(**options)
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()
