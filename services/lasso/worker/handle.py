"""The lasso server's handle on one run's MPC worker process (services.lasso.worker.main).

The server spawns the worker with one end of a Unix socket pair (inherited fd, no
listening socket, nothing for another local user to dial), relays frames over it, and
kills the process when the run fails or is cancelled. The worker is a plain subprocess
of the server (`asyncio.create_subprocess_exec`, the interpreter of the server), so
it dies with its link if the server dies, and the server sees its exit asynchronously.

A frozen worker (stopped, or its interpreter stuck) keeps its link open, and the peers'
keepalive only watches the servers: so a thread in the worker writes one heartbeat byte
per HEARTBEAT_S to a pipe (services.lasso.worker.heartbeat), and `wait_silent` returns
when none came for a while.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.lasso.worker.frames import Frame
from services.lasso.worker.link import FrameLink, OnClose, OnFrame, open_link
from services.mesh.process import SINGLE_THREAD_ENV


class WorkerHandle(Protocol):
    def send(self, frame: Frame) -> None: ...

    async def writable(self) -> None:
        """Return once the frames queued for the worker are below the link's high-water mark."""
        ...

    def kill(self) -> None: ...

    async def wait(self) -> int | None: ...

    async def wait_silent(self, limit: float) -> None:
        """Return once the worker gave no sign of life for `limit` seconds (may never return)."""
        ...


WorkerFactory = Callable[[int, str, str, OnFrame, OnClose], Awaitable[WorkerHandle]]


class SubprocessWorker:
    """A running worker process, the link to it and its heartbeat pipe."""

    def __init__(self, process: asyncio.subprocess.Process, link: FrameLink, heartbeat_fd: int) -> None:
        self.process = process
        self.link = link
        self._loop = asyncio.get_running_loop()
        self._heartbeat_fd = heartbeat_fd
        self.last_heartbeat = self._loop.time()
        os.set_blocking(heartbeat_fd, False)
        self._loop.add_reader(heartbeat_fd, self._on_heartbeat)

    def _on_heartbeat(self) -> None:
        try:
            data = os.read(self._heartbeat_fd, 4096)
        except BlockingIOError:
            return
        if data:
            self.last_heartbeat = self._loop.time()
        else:
            self._close_heartbeat()

    def _close_heartbeat(self) -> None:
        if self._heartbeat_fd >= 0:
            self._loop.remove_reader(self._heartbeat_fd)
            os.close(self._heartbeat_fd)
            self._heartbeat_fd = -1

    def send(self, frame: Frame) -> None:
        self.link.send(frame)

    async def writable(self) -> None:
        await self.link.writable()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def wait(self) -> int | None:
        code = await self.process.wait()
        self._close_heartbeat()
        return code

    async def wait_silent(self, limit: float) -> None:
        while True:
            silent = self._loop.time() - self.last_heartbeat
            if silent >= limit:
                return
            await asyncio.sleep(limit - silent)


async def spawn_worker(pid: int, program: str, label: str, on_frame: OnFrame, on_close: OnClose) -> SubprocessWorker:
    """Start `python -m services.lasso.worker.main` for party `pid` and connect the link."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    heartbeat_read, heartbeat_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.lasso.worker.main",
            "--fd",
            str(theirs.fileno()),
            "--heartbeat-fd",
            str(heartbeat_write),
            "--pid",
            str(pid),
            "--program",
            program,
            "--label",
            label,
            pass_fds=(theirs.fileno(), heartbeat_write),
            env={**os.environ, **SINGLE_THREAD_ENV},
            stdin=asyncio.subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        os.close(heartbeat_read)
        raise
    finally:
        theirs.close()
        os.close(heartbeat_write)
    link = await open_link(ours, on_frame, on_close)
    return SubprocessWorker(process, link, heartbeat_read)
