"""Continuous batching over llama.cpp's batch API, on one thread per model.

Up to `parallel` generations run at once, each in its own llama.cpp sequence (a slot, see
`llamacpp_slots`) with its own sampler chain, stop sequences and cancel flag. Every step
builds one batch: the token each decoding reply sampled last, then prompt tokens of replies
still reading their prompt (a bounded chunk while others decode, so a long prompt never
stalls them). A generation joins or leaves between steps; the rest wait in arrival order.

llama.cpp contexts are not thread-safe, so only the engine's thread touches the context.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from parley.errors import ModelNotReady, UpstreamError
from parley.events import Finish, FinishReason, TextDelta, Usage
from parley.models.llamacpp_slots import Slot, SlotTable

log = logging.getLogger("parley.models.llamacpp")

END = object()  # the last item a generation's queue receives
_TOP_K = 40  # llama-cpp-python's defaults, kept so seeded replies keep their character
_PENALTY_LAST_N = 64  # tokens a repetition penalty looks back over (llama.cpp's default)
_MIN_P = 0.05


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """What one generation did. Logged (as the record's `generation` attribute) when it ends."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason  # "stop", "length", "cancelled" or "error"
    started: float  # time.monotonic() when the engine took the request
    first_token: float | None  # when the first reply token was sampled
    ended: float
    cached_tokens: int = 0  # prompt tokens whose KV state was reused, not evaluated
    evaluated_tokens: int = 0  # tokens this generation put through llama_decode
    decoded_total: int = 0  # llama.cpp's own count of tokens its context decoded, at the end
    waited: float = 0.0  # seconds between its submission and the engine taking it

    @property
    def tokens_per_second(self) -> float | None:
        """The decode rate, after the first token (the prompt's evaluation is not in it)."""
        if self.first_token is None or self.completion_tokens < 2 or self.ended <= self.first_token:
            return None
        return (self.completion_tokens - 1) / (self.ended - self.first_token)


@dataclass(slots=True)
class Generation:
    """One request's generation, shared by the request (on the loop) and the engine thread."""

    loop: asyncio.AbstractEventLoop
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_sequences: list[str]
    repeat_penalty: float = 1.0  # 1: none
    events: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = 0.0  # time.monotonic() when submitted
    # Written by the engine thread only.
    started: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0
    evaluated_tokens: int = 0
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


@dataclass(slots=True)
class _Running:
    generation: Generation
    slot: Slot
    sampler: Any  # llama_sampler_p
    unread: list[int]  # prompt tokens not evaluated yet
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    held: str = ""  # reply text that may be the start of a stop sequence
    next_token: int | None = None  # sampled, to be evaluated in the next step


class BatchEngine:
    """Runs generations in batches on its own thread; `submit` from anywhere, `close` once."""

    def __init__(
        self,
        *,
        name: str,
        model: Any,  # llama_cpp._internals.LlamaModel
        context: Any,  # llama_cpp._internals.LlamaContext with one sequence per slot
        slots: SlotTable,
        parallel: int,
        batch_size: int,
        prefill_chunk: int,
        reuse_prefix: bool,
        special_text: Callable[[], bool],
        report: Callable[[GenerationReport], None],
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._name = name
        self._model = model
        self._ctx = context.ctx
        self._memory = context.memory
        self._vocab = model.vocab
        self._slots = slots
        self._parallel = min(parallel, len(slots.slots))
        self._batch_size = batch_size
        self._prefill_chunk = prefill_chunk
        self._reuse_prefix = reuse_prefix
        self._special_text = special_text
        self._report = report
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
        self._queue: deque[Generation] = deque()
        self._running: list[_Running] = []
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        generation.submitted = time.monotonic()
        with self._wake:
            if self._closing:
                raise ModelNotReady(f"model {self._name!r} is not loaded")
            self._queue.append(generation)
            self._wake.notify()

    def queued(self) -> int:
        with self._wake:
            return len(self._queue)

    def close(self) -> None:
        """Serve what was submitted, then stop the thread and free the batch."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)

    # The engine thread from here on.

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._running and not self._closing:
                    self._wake.wait()
                if self._closing and not self._queue and not self._running:
                    return
                joining: list[Generation] = []
                while self._queue and len(self._running) + len(joining) < self._parallel:
                    joining.append(self._queue.popleft())
            try:
                for generation in joining:
                    self._admit(generation)
                if self._running:
                    self._step()
            except BaseException as exc:  # reported to every running request, never lost in the thread
                for running in list(self._running):
                    self._fail(running, exc)

    def _admit(self, generation: Generation) -> None:
        generation.started = time.monotonic()
        if generation.cancelled.is_set():  # the client left while waiting for its turn
            self._finish_report(generation, "cancelled")
            return
        claim = self._slots.claim(generation.prompt_tokens, reuse=self._reuse_prefix)
        slot, reused = claim.slot, claim.reused
        if not self._lib.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1):
            # Some memories (recurrent models) can't drop a tail: start the sequence over.
            self._lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reused = 0
        del slot.tokens[reused:]
        generation.cached_tokens = reused
        running = _Running(generation, slot, self._sampler(generation), generation.prompt_tokens[reused:])
        self._running.append(running)

    def _sampler(self, generation: Generation) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if generation.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(_TOP_K))
            if generation.repeat_penalty != 1.0:  # after top-k: it then scans 40 candidates, not the vocabulary
                # This build's llama.h takes the vocabulary's size first.
                penalties = lib.llama_sampler_init_penalties(
                    lib.llama_vocab_n_tokens(self._vocab), _PENALTY_LAST_N, generation.repeat_penalty, 0.0, 0.0
                )
                lib.llama_sampler_chain_add(chain, penalties)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(generation.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(_MIN_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(generation.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(generation.seed))
        return chain

    def _step(self) -> None:
        """One llama_decode for every running generation, then one sampled token for each that is due."""
        for running in list(self._running):
            if running.generation.cancelled.is_set():
                self._finish(running, "cancelled")
        if not self._running:
            return
        batch = self._batch
        staged: list[tuple[_Running, list[int]]] = []
        sample_at: list[tuple[_Running, int]] = []
        size = 0

        def add(token: int, position: int, seq_id: int, logits: bool) -> None:
            nonlocal size
            batch.token[size] = token
            batch.pos[size] = position
            batch.n_seq_id[size] = 1
            batch.seq_id[size][0] = seq_id
            batch.logits[size] = logits
            size += 1

        for running in self._running:
            if running.next_token is not None:
                add(running.next_token, len(running.slot.tokens), running.slot.seq_id, True)
                staged.append((running, [running.next_token]))
                sample_at.append((running, size - 1))
        # Prompts take what is left of the batch; only a chunk of it while replies are decoding.
        room = min(self._batch_size - size, self._prefill_chunk if sample_at else self._batch_size)
        for running in self._running:
            if not running.unread or room <= 0:
                continue
            chunk = running.unread[:room]
            start = len(running.slot.tokens)
            last = len(chunk) == len(running.unread)
            for offset, token in enumerate(chunk):
                add(token, start + offset, running.slot.seq_id, last and offset == len(chunk) - 1)
            staged.append((running, chunk))
            if last:
                sample_at.append((running, size - 1))
            room -= len(chunk)
        batch.n_tokens = size
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            failure = UpstreamError(
                f"model {self._name!r} failed during the reply", detail=f"llama_decode returned {status}"
            )
            for running, _ in staged:
                self._fail(running, failure)
            return
        for running, tokens in staged:
            running.slot.tokens.extend(tokens)
            running.generation.evaluated_tokens += len(tokens)
            if running.next_token is None:  # a chunk of its prompt
                del running.unread[: len(tokens)]
            running.next_token = None
        for running, index in sample_at:
            token = self._lib.llama_sampler_sample(running.sampler, self._ctx, index)
            self._accept(running, token)

    def _accept(self, running: _Running, token: int) -> None:
        generation = running.generation
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(running, "stop")
            return
        generation.completion_tokens += 1
        generation.first_token_at = generation.first_token_at or time.monotonic()
        piece = running.decoder.decode(self._model.detokenize([token], special=self._special_text()))
        text, running.held, hit = split_at_stop(running.held + piece, generation.stop_sequences)
        if text:
            generation.emit(TextDelta(text))
        if hit:
            self._finish(running, "stop", hit=True)
        elif generation.completion_tokens >= generation.max_tokens:
            self._finish(running, "length")
        else:
            running.next_token = token

    def _finish(self, running: _Running, reason: FinishReason, *, hit: bool = False) -> None:
        generation = running.generation
        if reason != "cancelled":
            if not hit:
                # The reply ended: what was held back is not a stop sequence after all.
                rest = running.held + running.decoder.decode(b"", final=True)
                ends = [rest.find(stop) for stop in generation.stop_sequences if stop in rest]
                rest = rest[: min(ends)] if ends else rest
                if rest:
                    generation.emit(TextDelta(rest))
            generation.emit(
                Usage(len(generation.prompt_tokens), generation.completion_tokens, generation.cached_tokens)
            )
            generation.emit(Finish(reason))
        self._retire(running)
        self._finish_report(generation, reason)

    def _fail(self, running: _Running, exc: BaseException) -> None:
        running.generation.emit(exc)
        # Its KV state may hold half a batch: forget the sequence rather than trust it.
        self._lib.llama_memory_seq_rm(self._memory, running.slot.seq_id, -1, -1)
        running.slot.tokens.clear()
        self._retire(running)
        self._finish_report(running.generation, "error")

    def _retire(self, running: _Running) -> None:
        self._running.remove(running)
        self._lib.llama_sampler_free(running.sampler)
        self._slots.release(running.slot)

    def _finish_report(self, generation: Generation, reason: FinishReason) -> None:
        perf = self._lib.llama_perf_context(self._ctx)
        self._report(
            GenerationReport(
                self._name,
                len(generation.prompt_tokens),
                generation.completion_tokens,
                reason,
                generation.started,
                generation.first_token_at,
                time.monotonic(),
                generation.cached_tokens,
                generation.evaluated_tokens,
                perf.n_p_eval + perf.n_eval,
                generation.started - generation.submitted,
            )
        )
        generation.emit(END)  # after the report is logged, so a request never ends before its log line
