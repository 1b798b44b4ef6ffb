"""What every streaming transport shares: SSE framing, the head wait, errors, cancellation."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from parley.chat.run import Run
from parley.errors import ParleyError, as_parley_error
from parley.events import StreamEvent

log = logging.getLogger("parley.stream")

SSEMessage = bytes | ServerSentEvent
EventEncoder = Callable[[StreamEvent], Iterable[SSEMessage]]


async def close_run(run: Run) -> None:
    """Stop a run even while the task closing it is being cancelled (a client that left)."""
    with anyio.CancelScope(shield=True):
        await run.aclose()


async def sse_events(
    run: Run,
    encode: EventEncoder,
    opening: Iterable[SSEMessage],
    closing: Callable[[], Iterable[SSEMessage]],
    on_error: Callable[[ParleyError], SSEMessage],
) -> AsyncIterator[SSEMessage]:
    """The body of an SSE response: opening events, encoded run events, closing events.

    A failure after the first byte ends the stream with an error event, never a cut.
    Leaving early (the client went away) closes the run, which stops the generation.
    """
    try:
        for message in opening:
            yield message
        async for event in run:
            for message in encode(event):
                yield message
        for message in closing():
            yield message
    except Exception as exc:
        error = as_parley_error(exc)
        if not isinstance(exc, ParleyError):
            log.exception("run %s failed", run.id)
        yield on_error(error)
    finally:
        await close_run(run)


def sse_response(request: Request, body: AsyncIterator[SSEMessage]) -> EventSourceResponse:
    ping = request.app.state.settings.sse_ping_seconds
    return EventSourceResponse(body, ping=ping, headers={"Cache-Control": "no-cache, no-transform"})


async def collect_unless_disconnected(run: Run, request: Request) -> None:
    """Run to the end for a non-streamed reply; cancel the run if the client goes away first."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            await run.collect()
        except Exception as exc:  # raised outside the group, which would wrap it in an ExceptionGroup
            failure = exc
        finally:
            group.cancel_scope.cancel()
            await close_run(run)
    if failure is not None:
        raise failure
