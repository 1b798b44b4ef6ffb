"""Runs that outlive their connection: event logs (memory, Redis Streams), resume, cancel, idempotency."""

from parley.runs.hub import EventSink, LoggedRun, RunEncoder, RunHub, open_run_hub
from parley.runs.memory_log import NamedBytes
from parley.runs.records import LoggedEvent, RunExpired, RunNotFound, RunNotResumable, RunRecord

__all__ = [
    "EventSink",
    "LoggedEvent",
    "LoggedRun",
    "NamedBytes",
    "RunEncoder",
    "RunExpired",
    "RunHub",
    "RunNotFound",
    "RunNotResumable",
    "RunRecord",
    "open_run_hub",
]
