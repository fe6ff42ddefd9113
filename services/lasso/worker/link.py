"""The local link (one Unix socket pair) between a lasso server and its MPC worker.

Both ends use `FrameLink`: an asyncio Protocol that decodes frames as bytes arrive and
hands each to a callback synchronously (no task per frame: MPyC's own exchanger works
the same way), and writes frames with the transport's non-blocking, ordered `write`.
The link ending — EOF, an error, or a malformed frame — is reported once to `on_close`.
Writes are not bounded by the link itself: `writable()` waits while more than
WRITE_HIGH_WATER bytes are queued, and the lasso server awaits it before it reads the next
message from a peer's stream, so a peer that sends faster than the worker reads is slowed
by gRPC's flow control instead of filling the server's memory.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from services.lasso.worker.frames import Frame, FrameDecoder, FrameError, encode

WRITE_HIGH_WATER = 16 * 1024 * 1024

OnFrame = Callable[[Frame], None]
OnClose = Callable[[Exception | None], None]


class FrameLink(asyncio.Protocol):
    def __init__(self, on_frame: OnFrame, on_close: OnClose) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def writable(self) -> None:
        """Return once the queued writes are below the high-water mark (or the link closed)."""
        if not self._writable.is_set():
            await self._writable.wait()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FrameError as exc:
            self._finish(exc)
            return
        for frame in frames:
            if self._closed:
                return
            self._on_frame(frame)

    def eof_received(self) -> bool:
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._writable.set()
        if self._transport is not None:
            self._transport.close()
        self._on_close(exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, frame: Frame) -> None:
        """Queue one frame for the other end (dropped once the link is closed)."""
        if self._closed or self._transport is None or self._transport.is_closing():
            return
        self._transport.write(encode(frame))

    def close(self) -> None:
        """Close after the queued frames are written."""
        if self._transport is not None:
            self._transport.close()


async def open_link(sock: socket.socket, on_frame: OnFrame, on_close: OnClose) -> FrameLink:
    """A FrameLink over an already connected stream socket."""
    loop = asyncio.get_running_loop()
    _, link = await loop.create_unix_connection(lambda: FrameLink(on_frame, on_close), sock=sock)
    return link
