"""`WS /ws/chat/{session_id}`: the `/api/chat` events as JSON frames over a WebSocket.

The session id names a conversation, so its history survives reconnects and restarts.
Client frames: `{"message": "...", "model"?, "agent"?, "max_tokens"?, "temperature"?, "collections"?}` to
send a message (with `collections`, a `sources` frame comes before the first token), `{"type": "cancel"}` to
stop the reply in progress (wherever it runs, for a resumed one), `{"type": "resume", "run_id", "after"}` to
attach to a run after event `after`, `{"type": "ping"}` for an application-level keep-alive (answered
`{"event": "pong"}`). Server frames: `{"event": NAME, "data": {...}, "seq": N}` with the same names, payloads
and numbers as `/api/chat`'s SSE events (`seq` is their `id:`). With `on_disconnect` "continue" (the
default), a reply whose client leaves keeps generating and can be resumed, here or over SSE, from any instance.
One reply at a time: a message sent while a reply runs is refused with an error frame
(`code: "busy"`), not queued, so a client never has replies it didn't wait for.
A cancelled reply (or, with "cancel", one whose client left) is saved as cancelled with its partial text; a
cancel that comes after the model finished changes nothing. Frames are text, or binary holding
JSON in UTF-8. Malformed frames get an error frame (`code: "invalid_frame"`) and the socket
stays open.

On a server that requires keys, a socket sends its key as a header (`Authorization` or
`x-api-key`), or, from a browser, offers the subprotocols `parley` and `parley.key.<key>`
(`new WebSocket(url, ["parley", "parley.key." + key])`; the server answers `parley`), or sends
`{"type": "auth", "api_key": "<key>"}` as its first frame (`parley.api.ws_auth`). Never in the URL,
which access logs keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from parley.access.edge import WS_PROTOCOL
from parley.access.principal import principal_of
from parley.api.chat_events import ChatEvents, NamedEvent
from parley.api.compat.workshop import WorkshopFrames
from parley.api.deps import ConversationChatDep
from parley.api.draining import SERVICE_RESTART
from parley.api.run_stream import LoggedChatEvents
from parley.api.streaming import close_run
from parley.api.ws_auth import authenticate_first_frame, awaiting_key
from parley.api.ws_frames import MessageFrame, ResumeFrame, parse_frame
from parley.chat.turns import ConversationChat
from parley.config import Settings
from parley.errors import InvalidRequest, ParleyError, ServerShuttingDown, as_parley_error
from parley.lifecycle import Lifecycle
from parley.logs import current_request_id
from parley.models.base import GenerationParams
from parley.runs import RunHub

log = logging.getLogger("parley.ws")

router = APIRouter(tags=["Parley chat API"])


class _Session:
    """One socket: its frames in, and at most one reply at a time out.

    A reply is stopped through an anyio cancel scope around its streaming only, never by
    cancelling its task: a cancel that comes while the ended reply is being saved (or twice, a
    cancel frame and then a disconnect) must not cut that save short, and a native Task.cancel()
    goes through the shield that close_run puts around it.
    """

    def __init__(
        self,
        socket: WebSocket,
        session_id: str,
        conversations: ConversationChat,
        lifecycle: Lifecycle,
        runs: RunHub | None = None,
    ) -> None:
        self._socket = socket
        self._runs = runs
        self._following: str | None = None  # the run whose log this socket reads (a surviving reply)
        self._cancels: set[asyncio.Task[None]] = set()
        self._session_id = session_id
        self._conversations = conversations
        self._lifecycle = lifecycle
        self.principal = principal_of(socket)
        settings: Settings = socket.app.state.settings
        self._max_frame_bytes = settings.max_body_bytes
        self._max_json_depth = settings.max_json_depth
        self._result_chars = settings.tools.client_result_chars
        self._encode = frame_format(settings)
        self._numbered = settings.websocket_frames == "parley"  # the workshop page's frames have no seq
        self._on_disconnect = settings.on_disconnect
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        # Set from the moment a message is accepted until its reply is saved: the session is busy.
        self._running: anyio.CancelScope | None = None

    def shutting_down(self) -> None:
        """The server is draining: close now if no reply is running, else once it has ended."""
        if self._running is None and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            async with self._sending:
                await self._socket.close(SERVICE_RESTART, "server shutting down")

    async def send(self, named: NamedEvent, seq: int | None = None) -> None:
        frame = self._encode(named)
        if frame is not None:
            if seq is not None and self._numbered:
                frame["seq"] = seq
            await self.send_frame(frame)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        async with self._sending:
            await self._socket.send_text(json.dumps(frame))

    async def handle(self, text: str | bytes) -> None:
        try:
            frame = parse_frame(text, max_bytes=self._max_frame_bytes, max_depth=self._max_json_depth)
        except ParleyError as error:
            await self.send(ChatEvents.error(error))
            return
        if isinstance(frame, MessageFrame):
            if self._lifecycle.draining:
                await self.send(ChatEvents.error(ServerShuttingDown()))
            elif self._running is not None:
                busy = InvalidRequest("a reply is still running: wait for it or cancel it first", code="busy")
                await self.send(ChatEvents.error(busy))
            else:
                self._running = anyio.CancelScope()
                self._task = asyncio.create_task(self._reply(frame, self._running))
        elif isinstance(frame, ResumeFrame):
            if self._runs is None or self._running is not None:
                busy = InvalidRequest("a reply is still running: wait for it or cancel it first", code="busy")
                await self.send(ChatEvents.error(busy))
            else:
                self._running = anyio.CancelScope()
                self._task = asyncio.create_task(self._resume(frame, self._running))
        elif frame.type == "ping":
            await self.send_frame({"event": "pong"})
        elif self._following is not None and self._runs is not None:
            # A surviving reply (maybe on another instance): stopped there; its end comes through the log.
            cancel = asyncio.create_task(self._cancel_following(self._runs, self._following))
            self._cancels.add(cancel)
            cancel.add_done_callback(self._cancels.discard)
        elif self._running is not None:
            self._running.cancel()
        else:
            await self.send(ChatEvents.error(InvalidRequest("no reply is running", code="nothing_to_cancel")))

    async def _reply(self, frame: MessageFrame, stopping: anyio.CancelScope) -> None:
        try:
            turn = await self._conversations.start(
                frame.message,
                conversation_id=self._session_id,
                model=frame.model,
                agent=frame.agent,
                params=GenerationParams(max_tokens=frame.max_tokens, temperature=frame.temperature),
                principal=self.principal,
                collections=frame.collections,
            )
        except Exception as exc:
            self._running = None
            await self._send_error(exc)
            return
        events = ChatEvents(turn, self._result_chars)
        if self._runs is not None and self._numbered and (frame.on_disconnect or self._on_disconnect) == "continue":
            try:
                await self._runs.start_run(
                    turn.run,
                    LoggedChatEvents(events),
                    owner=self.principal.owner,
                    conversation_id=turn.conversation_id,
                    message_id=turn.message_id,
                )
            except Exception as exc:
                self._running = None
                await self._send_error(exc)
                return
            await self._follow(turn.run.id, 0, stopping)
            return
        failure: Exception | None = None
        turn.run.bind_stop(stopping.cancel)
        seq = 0
        try:
            for named in events.opening():
                seq += 1
                await self.send(named, seq)
            with stopping:  # a cancel frame or the client leaving: the reply ends as cancelled
                async for event in turn.run:
                    for named in events.encode(event):
                        seq += 1
                        await self.send(named, seq)
        except Exception as exc:
            failure = exc
        finally:
            try:
                await close_run(turn.run)  # the reply is saved here, whatever its outcome
            finally:
                self._running = None  # before the last frame: a client answering it is not told busy
        failure = failure or turn.run.interruption or turn.run.end_failure
        if failure is not None:
            await self._send_error(failure)
        else:
            with contextlib.suppress(Exception):  # the client may be gone
                for named in events.closing():
                    seq += 1
                    await self.send(named, seq)
        if self._lifecycle.draining:
            self.shutting_down()

    async def _cancel_following(self, runs: RunHub, run_id: str) -> None:
        try:
            await runs.cancel(run_id, self.principal.owner)
        except Exception as exc:  # (e.g. its instance died): the client is told, the socket stays open
            await self._send_error(exc)

    async def _resume(self, frame: ResumeFrame, stopping: anyio.CancelScope) -> None:
        assert self._runs is not None
        try:
            record = await self._runs.resumable(frame.run_id, self.principal.owner)
        except Exception as exc:
            self._running = None
            await self._send_error(exc)
            return
        await self._follow(record.run_id, frame.after, stopping)

    async def _follow(self, run_id: str, after: int, stopping: anyio.CancelScope) -> None:
        """Send a run's logged events after `after` until it ends. The client leaving stops only this:
        the run goes on, for a later resume."""
        assert self._runs is not None
        self._following = run_id
        failure: Exception | None = None
        try:
            with stopping:
                async for events in self._runs.read(run_id, after):
                    for seq, name, data in events:
                        await self.send_frame({"event": name.decode(), "data": orjson.loads(data), "seq": seq})
        except Exception as exc:
            failure = exc
        finally:
            self._following = None
            self._running = None
        if failure is not None:
            await self._send_error(failure)
        if self._lifecycle.draining:
            self.shutting_down()

    async def _send_error(self, exc: Exception) -> None:
        if isinstance(exc, WebSocketDisconnect):
            return  # the client left: nobody to tell
        if not isinstance(exc, ParleyError):
            log.error("%s websocket session %s failed", current_request_id(), self._session_id, exc_info=exc)
        with contextlib.suppress(Exception):
            await self.send(ChatEvents.error(as_parley_error(exc)))

    async def stop(self) -> None:
        """The client left: stop the reply in progress and wait until it is saved."""
        if self._running is not None:
            self._running.cancel()
        if self._task is not None:
            await asyncio.wait({self._task})


def frame_format(settings: Settings) -> Callable[[NamedEvent], dict[str, Any] | None]:
    """How a socket's events become frames: Parley's own (the default), or the workshop chatbot's
    (`websocket_frames = "workshop"`), whose page can't ask for them."""
    if settings.websocket_frames == "workshop":
        return WorkshopFrames().encode
    return _parley_frame


def _parley_frame(named: NamedEvent) -> dict[str, Any]:
    name, payload = named
    return {"event": name, "data": payload.model_dump(mode="json")}


@router.websocket("/ws/chat/{session_id}")
async def chat_socket(socket: WebSocket, session_id: str, conversations: ConversationChatDep) -> None:
    await socket.accept(subprotocol=WS_PROTOCOL if WS_PROTOCOL in socket.scope.get("subprotocols", ()) else None)
    if awaiting_key(socket) and await authenticate_first_frame(socket, socket.app.state.access) is None:
        return
    lifecycle: Lifecycle = socket.app.state.lifecycle
    session = _Session(socket, session_id, conversations, lifecycle, socket.app.state.runs)
    lifecycle.add_session(session)
    try:
        while (message := await socket.receive())["type"] != "websocket.disconnect":
            text = message.get("text")
            await session.handle(text if text is not None else message.get("bytes") or b"")
    except WebSocketDisconnect:
        pass
    finally:
        try:
            await session.stop()
        finally:
            lifecycle.remove_session(session)
