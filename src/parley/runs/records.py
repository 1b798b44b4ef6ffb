"""What a run's log holds: its events, numbered, and the record of who it belongs to and how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parley.errors import ParleyError

# One event as every transport sends it: (seq, name, JSON payload). Encoded once, when the run
# made it, so that any instance can replay it without the run.
LoggedEvent = tuple[int, bytes, bytes]
RunState = Literal["running", "complete", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    owner: str | None
    conversation_id: str
    message_id: str
    instance: str
    state: RunState = "running"
    last_seq: int = 0
    alive: bool = True  # for a running run: whether the instance that runs it is still there

    @property
    def resumable(self) -> bool:
        """Its events can be read to the end: it ended, or it is running on a live instance."""
        return self.state != "running" or self.alive

    def visible_to(self, owner: str | None) -> bool:
        """The conversations' rule: an owner sees its own; None (admin, an open server) sees all."""
        return owner is None or owner == self.owner


@dataclass(frozen=True, slots=True)
class RunReference:
    """What is kept longer than the log: where a finished run's reply is stored."""

    owner: str | None
    conversation_id: str
    message_id: str

    def visible_to(self, owner: str | None) -> bool:
        return owner is None or owner == self.owner

    @property
    def location(self) -> str:
        return f"/api/conversations/{self.conversation_id}"


class RunNotFound(ParleyError):
    """No such run, or another owner's: the same answer."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "run_not_found"

    def __init__(self) -> None:
        super().__init__("no such run")


class RunExpired(ParleyError):
    """The run ended longer ago than its events are kept: its reply is in the conversation."""

    status_code = 410
    error_type = "invalid_request_error"
    code = "run_expired"

    def __init__(self, reference: RunReference) -> None:
        super().__init__(
            f"the run ended and its events are no longer kept; its reply is message {reference.message_id} "
            f"of {reference.location}",
            headers={"Location": reference.location},
        )


class RunNotResumable(ParleyError):
    """The instance running the run stopped before it ended: what it produced is saved, and
    nothing generates it again."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "run_not_resumable"

    def __init__(self, record: RunRecord | RunReference) -> None:
        location = f"/api/conversations/{record.conversation_id}"
        super().__init__(
            f"the server running this reply stopped before it ended; what it produced is saved as message "
            f"{record.message_id} of {location}",
            headers={"Location": location},
        )


class IdempotencyKeyReused(ParleyError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used for a different request")


class RunLogUnavailable(ParleyError):
    """Redis, which keeps the runs' logs for every instance, can't be reached: the reply is not started."""

    status_code = 503
    error_type = "server_error"
    code = "run_log_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__("the run log (Redis) can't be reached; try again shortly", detail=detail)
