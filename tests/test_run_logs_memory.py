"""Run logs in a server's memory: what a busy server keeps of finished runs is bounded, and a run
whose log was dropped answers as expired (410, with where its reply is stored)."""

from __future__ import annotations

import pytest

from parley.runs import RunExpired, RunHub, RunRecord
from parley.runs.idempotency import Idempotency, MemoryIdempotencyStore
from parley.runs.memory_log import ENDED_KEPT, MemoryRunLogs

EVENT = (b"text_delta", b'{"text":"hi"}')


def finish_runs(logs: MemoryRunLogs, count: int) -> list[str]:
    run_ids = []
    for number in range(count):
        record = RunRecord(f"run_{number:08x}", "owner", f"conv-{number}", f"msg-{number}", "here")
        logs.begin(record).extend([EVENT, EVENT])
        logs.end(record.run_id, "complete")
        run_ids.append(record.run_id)
    return run_ids


async def test_a_busy_server_keeps_the_newest_finished_logs_and_the_oldest_answer_expired() -> None:
    logs = MemoryRunLogs(keep_seconds=300)
    hub = RunHub("here", logs, Idempotency(MemoryIdempotencyStore(60)))
    run_ids = finish_runs(logs, ENDED_KEPT + 3)
    for dropped in run_ids[:3]:
        with pytest.raises(RunExpired) as expired:
            await hub.find(dropped, "owner")
        assert expired.value.headers["Location"] == f"/api/conversations/conv-{int(dropped[4:], 16)}"
    newest = await hub.find(run_ids[-1], "owner")
    assert newest.state == "complete" and newest.last_seq == 2
    assert [events async for events in hub.read(run_ids[-1], 1)] == [[(2, *EVENT)]]
    logs.aclose()


async def test_the_local_copy_of_a_shared_log_goes_when_its_run_ends() -> None:
    logs = MemoryRunLogs(keep_seconds=300, copy_of_shared=True)
    (run_id,) = finish_runs(logs, 1)
    assert logs.buffer(run_id) is None and logs.record(run_id) is None  # (Redis has it: readers go there)
    assert logs.reference(run_id) is not None
