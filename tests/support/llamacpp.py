"""For tests of the real local model: a Parley serving SmolLM2, and a watch on its generation log."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from parley.models.llamacpp_engine import GenerationReport
from tests.support.server import running_parley

SMOLLM2 = {"name": "smollm2", "provider": "llamacpp", "context_size": 512, "threads": 2}
CONTEXT = 512
LONG_PROMPT = "Write a long story about a dragon."  # greedy SmolLM2 runs past 400 tokens on this


@dataclass(frozen=True, slots=True)
class Logged:
    at: float  # time.monotonic() when the server logged it
    record: logging.LogRecord


class GenerationLog(logging.Handler):
    """What the llama.cpp provider logs (requests queued, generations ended), to wait on and inspect.

    The server runs in this process, so its log is the operator's view of it: each finished
    generation logs a GenerationReport saying how it ended and how many tokens it made.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._changed = threading.Condition()
        self.entries: list[Logged] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.entries.append(Logged(time.monotonic(), record))
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.entries)

    def since(self, mark: int) -> list[Logged]:
        with self._changed:
            return self.entries[mark:]

    def queued(self, mark: int) -> list[Logged]:
        return [entry for entry in self.since(mark) if getattr(entry.record, "queued", False)]

    def reports(self, mark: int) -> list[GenerationReport]:
        found = (getattr(entry.record, "generation", None) for entry in self.since(mark))
        return [report for report in found if isinstance(report, GenerationReport)]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise AssertionError(f"server log never showed: {what}")


@contextlib.contextmanager
def smollm2_server(**options: Any) -> Iterator[tuple[str, GenerationLog]]:
    """A real Parley serving the bundled SmolLM2 (context 512), with its model log watched.

    `options` are the model's own (`parallel`, `cache_slots`, `prompt_cache`, ...).
    """
    logger = logging.getLogger("parley.models.llamacpp")
    watcher = GenerationLog()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(watcher)
    try:
        with running_parley(models=[{**SMOLLM2, **options}], ready_timeout=120) as url:
            yield url, watcher
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)
