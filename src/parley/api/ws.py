"""`WS /ws/chat/{session_id}`: the `/api/chat` events as JSON frames over a WebSocket.

The session id names a conversation, so its history survives reconnects and restarts.
Client frames: `{"message": "...", "model"?, "agent"?, "max_tokens"?, "temperature"?}` to send a
message, `{"type": "cancel"}` to stop the reply in progress, `{"type": "ping"}` for an
application-level keep-alive (answered `{"event": "pong"}`). Server frames:
`{"event": NAME, "data": {...}}` with the same names and payloads as `/api/chat`'s SSE events.
One reply at a time: a message sent while a reply runs is refused with an error frame
(`code: "busy"`), not queued, so a client never has replies it didn't wait for.
Malformed frames get an error frame and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley.api.chat_events import ChatEvents, NamedEvent
from parley.api.deps import ConversationChatDep
from parley.api.streaming import close_run
from parley.chat.turns import ConversationChat
from parley.errors import InvalidRequest, ParleyError, as_parley_error
from parley.models.base import GenerationParams

router = APIRouter(tags=["Parley chat API"])


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    message: str = Field(min_length=1)
    model: str | None = None
    agent: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


class ControlFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel", "ping"]


def parse_frame(text: str) -> MessageFrame | ControlFrame:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"frame is not valid JSON: {exc}", code="invalid_frame") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("a frame is a JSON object", code="invalid_frame")
    try:
        if data.get("type", "message") == "message":
            return MessageFrame.model_validate(data)
        return ControlFrame.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{where}: {first['msg']}" if where else first["msg"], code="invalid_frame") from exc


class _Session:
    def __init__(self, socket: WebSocket, session_id: str, conversations: ConversationChat) -> None:
        self._socket = socket
        self._session_id = session_id
        self._conversations = conversations
        self._sending = asyncio.Lock()
        self.reply: asyncio.Task[None] | None = None

    async def send(self, named: NamedEvent) -> None:
        name, payload = named
        await self.send_frame({"event": name, "data": payload.model_dump(mode="json")})

    async def send_frame(self, frame: dict[str, Any]) -> None:
        async with self._sending:
            await self._socket.send_text(json.dumps(frame))

    async def handle(self, text: str) -> None:
        try:
            frame = parse_frame(text)
        except ParleyError as error:
            await self.send(ChatEvents.error(error))
            return
        running = self.reply is not None and not self.reply.done()
        if isinstance(frame, MessageFrame):
            if running:
                busy = InvalidRequest("a reply is still running: wait for it or cancel it first", code="busy")
                await self.send(ChatEvents.error(busy))
            else:
                self.reply = asyncio.create_task(self._reply(frame))
        elif frame.type == "ping":
            await self.send_frame({"event": "pong"})
        elif running and self.reply is not None:
            self.reply.cancel()
        else:
            await self.send(ChatEvents.error(InvalidRequest("no reply is running", code="nothing_to_cancel")))

    async def _reply(self, frame: MessageFrame) -> None:
        try:
            turn = await self._conversations.start(
                frame.message,
                conversation_id=self._session_id,
                model=frame.model,
                agent=frame.agent,
                params=GenerationParams(max_tokens=frame.max_tokens, temperature=frame.temperature),
            )
        except Exception as exc:
            await self.send(ChatEvents.error(as_parley_error(exc)))
            return
        events = ChatEvents(turn)
        try:
            for named in events.opening():
                await self.send(named)
            async for event in turn.run:
                for named in events.encode(event):
                    await self.send(named)
        except asyncio.CancelledError:
            pass  # a cancel frame, or the socket closed: the reply ends as cancelled
        except Exception as exc:
            await close_run(turn.run)
            with contextlib.suppress(Exception):
                await self.send(ChatEvents.error(as_parley_error(exc)))
            return
        finally:
            await close_run(turn.run)
        with contextlib.suppress(Exception):  # the client may be gone
            for named in events.closing():
                await self.send(named)

    async def stop(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
            await asyncio.wait({self.reply})


@router.websocket("/ws/chat/{session_id}")
async def chat_socket(socket: WebSocket, session_id: str, conversations: ConversationChatDep) -> None:
    await socket.accept()
    session = _Session(socket, session_id, conversations)
    try:
        while (message := await socket.receive())["type"] != "websocket.disconnect":
            text = message.get("text")
            if text is None:  # a binary frame: JSON in UTF-8 is accepted too
                text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
            await session.handle(text)
    except WebSocketDisconnect:
        pass
    finally:
        await session.stop()
