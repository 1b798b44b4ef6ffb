"""`/api/runs/{run_id}`: resume a run's events from any instance, cancel it from anywhere; and how
`POST /api/chat` starts a reply that outlives its connection (with an optional `Idempotency-Key`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from parley.access.principal import principal_of
from parley.api.chat_events import ChatEvents
from parley.api.deps import RunHubDep
from parley.api.input_limits import CheckedJSONRoute
from parley.api.run_stream import LoggedChatEvents, LoggedSSEResponse, SurvivingSSEResponse
from parley.api.streaming import ClientWatch, close_run
from parley.chat.turns import Turn
from parley.config import Settings
from parley.errors import InvalidRequest
from parley.runs import RunHub, RunNotFound, RunRecord

router = APIRouter(prefix="/api/runs", tags=["Parley chat API"], route_class=CheckedJSONRoute)

_RUN_ID = re.compile(r"run_[0-9a-f]{8,64}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as header values travel safely
IDEMPOTENT_REPLAY = "Idempotent-Replayed"


class ActiveRunOut(BaseModel):
    """The reply being generated in a conversation: resume it at `/api/runs/{run_id}/events?after=N`."""

    run_id: str
    last_seq: int = Field(description="The sequence number (SSE `id:`) of its newest event so far.")


class RunStateOut(BaseModel):
    run_id: str
    state: Literal["running", "complete", "cancelled", "failed"] = Field(
        description="`running` only if the run did not end within the wait (it was asked to stop)."
    )
    conversation_id: str
    message_id: str = Field(description="The reply's message in the conversation, saved with what it produced.")

    @classmethod
    def of(cls, record: RunRecord) -> RunStateOut:
        return cls(
            run_id=record.run_id,
            state=record.state,
            conversation_id=record.conversation_id,
            message_id=record.message_id,
        )


def active_run_out(record: RunRecord | None) -> ActiveRunOut | None:
    return None if record is None else ActiveRunOut(run_id=record.run_id, last_seq=record.last_seq)


def _checked_run_id(run_id: str) -> str:
    """A run id from the path: one no run can have is simply not found."""
    if _RUN_ID.fullmatch(run_id) is None:
        raise RunNotFound()
    return run_id


def resume_position(after: int | None, last_event_id: str | None) -> int:
    """Where to resume: `Last-Event-ID` (what a reconnecting EventSource sends, on the URL it first
    opened) wins over `after`; neither: from the start."""
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit() or len(text) > 18:
            raise InvalidRequest("Last-Event-ID must be an event's id: a whole number", param="Last-Event-ID")
        return int(text)
    return after or 0


_EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "`text/event-stream`: the run's events after the given position, with the same names, payloads "
            "and `id:` numbers as `POST /api/chat`, then live until the run ends (`message_complete`, or "
            "`error`). An `error` event without an `id:` ends a stream whose run can no longer be followed."
        ),
        "content": {"text/event-stream": {"schema": {}}},
    }
}


@router.get("/{run_id}/events", responses=_EVENTS_DOC, response_class=Response)
async def run_events(
    run_id: str,
    request: Request,
    hub: RunHubDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**53, description="Resume after this event id (`Last-Event-ID` wins).")
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
) -> Response:
    """Replay what a client missed of a run and follow it live, on any instance: its owner only."""
    record = await hub.resumable(_checked_run_id(run_id), principal_of(request).owner)
    position = resume_position(after, last_event_id)
    settings: Settings = request.app.state.settings
    return LoggedSSEResponse(hub.read(record.run_id, position), settings.sse_ping_seconds)


@router.post("/{run_id}/cancel")
async def cancel_run(run_id: str, request: Request, hub: RunHubDep) -> RunStateOut:
    """Stop the run on whichever instance runs it; its reply is saved as cancelled. A run that
    already ended is left as it is (its state says how it ended)."""
    record = await hub.cancel(_checked_run_id(run_id), principal_of(request).owner)
    return RunStateOut.of(record)


async def stream_surviving(
    request: Request,
    hub: RunHub,
    start: Callable[[], Awaitable[Turn]],
    *,
    idempotency_key: str | None,
    body: BaseModel,
) -> Response:
    """Start a reply driven by a run of its own (it goes on if the client leaves) and stream its log.

    With an `Idempotency-Key`, a retry of the same request gets the first one's run from its start."""
    settings: Settings = request.app.state.settings
    owner = principal_of(request).owner
    claim: str | None = None
    request_digest = ""  # (with a key: the body's, so a retry with another body is told apart)
    if idempotency_key is not None:
        if _IDEMPOTENCY_KEY.fullmatch(idempotency_key) is None:
            raise InvalidRequest("Idempotency-Key must be 1-255 visible ASCII characters", param="Idempotency-Key")
        claim = hub.idempotency.record_key(owner, idempotency_key)
        request_digest = digest_of(body)  # (only with a key: hashing every body showed in the profile)
        earlier = await hub.idempotency.claim(claim, request_digest)
        if earlier is not None:
            await hub.resumable(earlier, owner)
            response = LoggedSSEResponse(hub.read(earlier, 0), settings.sse_ping_seconds)
            response.headers[IDEMPOTENT_REPLAY] = "true"
            return response
    watch = ClientWatch(request.receive)  # (from now: a client that leaves before the stream begins)
    handed_over = False
    try:
        turn = await start()
        try:
            await turn.run.wait_for_head(settings.stream_head_wait_seconds)
        except BaseException:
            await close_run(turn.run)
            raise
        if watch.gone:  # left before the stream began: it never learned the run, so nobody could resume it
            await close_run(turn.run)
            if claim is not None:
                await hub.idempotency.release(claim)
            return Response(status_code=204)
        encoder = LoggedChatEvents(ChatEvents(turn, settings.tools.client_result_chars))
        logged = await hub.begin(
            turn.run, encoder, owner=owner, conversation_id=turn.conversation_id, message_id=turn.message_id
        )
        if claim is not None:
            try:
                await hub.idempotency.settle(claim, request_digest, turn.run.id)
            except BaseException:
                await hub.abandon(logged)
                claim = None  # (settled or not, the run it named has ended)
                raise
        handed_over = True
        return SurvivingSSEResponse(hub, logged, settings.sse_ping_seconds, watch)
    except BaseException:
        if claim is not None:
            await hub.idempotency.release(claim)
        raise
    finally:
        if not handed_over:
            watch.stop()


def digest_of(body: BaseModel) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()
