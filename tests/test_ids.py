"""Request and run ids: unique within a process, and across processes, forked ones included."""

from __future__ import annotations

import multiprocessing
import re
from multiprocessing.connection import Connection

from parley.ids import unique_hex


def test_ids_look_like_uuid_hex_and_never_repeat() -> None:
    ids = [unique_hex() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == len(ids)


def _send_ids(connection: Connection) -> None:
    connection.send([unique_hex() for _ in range(100)])


def test_a_forked_process_does_not_repeat_its_parents_ids() -> None:
    unique_hex()  # the parent has made ids before it forks
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_send_ids, args=(sender,))
    child.start()
    parent_ids = [unique_hex() for _ in range(100)]
    child_ids = receiver.recv()
    child.join(timeout=10)
    assert child.exitcode == 0
    assert not set(parent_ids) & set(child_ids)
