"""The local link over a real socket pair: frames in order, one close, bad bytes end it."""

from __future__ import annotations

import asyncio
import socket
import struct

from services.lasso.worker.frames import FrameError, Recv, Report, Send
from services.lasso.worker.link import open_link


def test_frames_cross_in_order_and_the_close_is_reported_once():
    async def main():
        a, b = socket.socketpair()
        got: list[object] = []
        closed: list[object] = []
        left = await open_link(a, lambda f: None, lambda e: None)
        await open_link(b, got.append, closed.append)
        frames = [Send(1, i, bytes([i % 256]) * 1000) for i in range(200)] + [Report(6, 1, 1)]
        for frame in frames:
            left.send(frame)
        left.close()
        for _ in range(200):
            if closed:
                break
            await asyncio.sleep(0.01)
        assert got == frames and closed == [None]
        left.send(Recv(1, 1, b"after close"))  # dropped, no error

    asyncio.run(main())


def test_malformed_bytes_close_the_link_with_the_error():
    async def main():
        a, b = socket.socketpair()
        closed: list[object] = []
        await open_link(b, lambda f: None, closed.append)
        a.sendall(struct.pack("<IB", 1, 200))
        for _ in range(200):
            if closed:
                break
            await asyncio.sleep(0.01)
        a.close()
        assert len(closed) == 1 and isinstance(closed[0], FrameError)

    asyncio.run(main())
