"""The one retry policy: which failures another endpoint or model may take over, and when.

A failed attempt is retried elsewhere only while nothing of its reply has been yielded (so
nothing has reached the client); after the first batch a failure is the client's error event.
A refusal of the request itself (400: too long, invalid) would be refused anywhere: it is
never retried, and it is not held against the endpoint that gave it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime

from parley.errors import InvalidRequest, ParleyError, RateLimited
from parley.events import EventBatch
from parley.logs import current_request_id
from parley.models.base import ChatRequest

log = logging.getLogger("parley.models.failover")


def worth_retrying(error: ParleyError) -> bool:
    """Whether another endpoint or model may succeed where this attempt failed."""
    return not isinstance(error, InvalidRequest)


def endpoints_fault(error: ParleyError) -> bool:
    """Whether the failure counts against the endpoint that gave it (puts it in cooldown)."""
    return not isinstance(error, InvalidRequest)


def retry_after_seconds(error: ParleyError) -> float | None:
    """A 429's Retry-After (seconds or an HTTP date), as seconds from now; None without one."""
    if not isinstance(error, RateLimited):
        return None
    value = error.headers.get("Retry-After")
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def close(batches: AsyncIterator[EventBatch]) -> None:
    """Close a model's stream early (which stops its generation), if it is still open."""
    aclose = getattr(batches, "aclose", None)
    if aclose is not None:
        await aclose()


# A model that can take a request: its name, and how to stream a reply from it.
Candidate = tuple[str, Callable[[ChatRequest], AsyncIterator[EventBatch]]]


async def first_to_start(candidates: list[Candidate], request: ChatRequest) -> AsyncIterator[EventBatch]:
    """The reply of the first candidate that starts one: the model, then its fallbacks in turn.

    Each candidate (a pool retries within itself first) is tried while nothing has been
    yielded; once a batch is out, the reply is that candidate's, failures included.
    """
    last: ParleyError | None = None
    for position, (name, stream) in enumerate(candidates):
        started = False
        batches = stream(request)
        try:
            async for batch in batches:
                if not started:
                    started = True
                    if position:
                        log.info("%s model %r answered as fallback %d", current_request_id(), name, position)
                yield batch
            return
        except ParleyError as error:
            if started or not worth_retrying(error):
                raise
            last = error
            if position + 1 < len(candidates):
                log.warning(
                    "%s model %r failed before its reply (%s): trying fallback %r",
                    current_request_id(),
                    name,
                    error.message,
                    candidates[position + 1][0],
                )
        finally:
            await close(batches)
    assert last is not None, "first_to_start needs at least one candidate"
    raise last
