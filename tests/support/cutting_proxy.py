"""A TCP proxy on 127.0.0.1 that sends each new connection to the next of several servers, and ends
the first one's chunked response early, after it carried a few events, then closes the connection:
a stream dropped mid-reply, for a real SSE client to recover from by itself."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class CuttingProxy:
    def __init__(self, backends: list[tuple[str, int]], cut_after_events: int) -> None:
        self._backends = backends
        self._cut_after = cut_after_events
        self.connections = 0
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: bool) -> None:
        events = 0
        try:
            while data := await reader.read(65536):
                if cut:
                    events += data.count(b"\r\nevent: text_delta")
                writer.write(data)
                if cut and events >= self._cut_after and data.endswith(b"\r\n\r\n\r\n"):
                    # At the end of a chunk that ends an event: the body is ended early, as a proxy's
                    # timeout ends it (an EventSource reconnects on that as on a network error).
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                await writer.drain()
        finally:
            writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self._backends[self.connections % len(self._backends)]
        cut = self.connections == 0
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection(host, port)
        upstream = asyncio.ensure_future(self._pipe(client_reader, server_writer, cut=False))
        await self._pipe(server_reader, client_writer, cut=cut)
        upstream.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await upstream
        server_writer.close()


@contextlib.contextmanager
def cutting_proxy(backends: list[tuple[str, int]], cut_after_events: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(backends, cut_after_events)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: asyncio.Server | None = None

    async def start() -> None:
        nonlocal server
        server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.port = server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=loop.run_forever, name="cutting-proxy", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    started.wait(10)
    try:
        yield proxy
    finally:

        async def shut() -> None:
            if server is not None:
                server.close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
