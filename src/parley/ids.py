"""Ids for requests and runs: unique across processes and restarts, and cheap to make.

uuid4 asks the OS for fresh random bytes for every id (a system call on every request);
here they are asked for once per process, and a counter makes each id unique within it.
"""

from __future__ import annotations

import itertools
import os


class _IdSource:
    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked worker must not repeat its parent's ids

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next_hex(self) -> str:
        return self._prefix + format(next(self._counter), "016x")


_source = _IdSource()


def unique_hex() -> str:
    """32 hex digits, like uuid4().hex, never repeated by this or any other process."""
    return _source.next_hex()
