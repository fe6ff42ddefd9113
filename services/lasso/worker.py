"""The lasso server's handle on one run's MPC worker process (services.lasso.mpc_worker).

The server spawns the worker with one end of a Unix socket pair (inherited fd, no
listening socket, nothing for another local user to dial), relays frames over it, and
kills the process when the run fails or is cancelled. The worker is a plain subprocess
of the server (`asyncio.create_subprocess_exec`, the interpreter of the server), so
it dies with its link if the server dies, and the server sees its exit asynchronously.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Awaitable, Callable, Protocol

from services.lasso.frames import Frame
from services.lasso.link import FrameLink, OnClose, OnFrame, open_link

# Three parties share few cores: numerical libraries stay single-threaded in workers.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPYC_MAXWORKERS": "0"}


class WorkerHandle(Protocol):
    def send(self, frame: Frame) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int | None: ...


WorkerFactory = Callable[[int, str, str, OnFrame, OnClose], Awaitable[WorkerHandle]]


class SubprocessWorker:
    """A running worker process and the link to it."""

    def __init__(self, process: asyncio.subprocess.Process, link: FrameLink) -> None:
        self.process = process
        self.link = link

    def send(self, frame: Frame) -> None:
        self.link.send(frame)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def wait(self) -> int | None:
        return await self.process.wait()


async def spawn_worker(pid: int, program: str, label: str, on_frame: OnFrame, on_close: OnClose) -> SubprocessWorker:
    """Start `python -m services.lasso.mpc_worker` for party `pid` and connect the link."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.lasso.mpc_worker",
            "--fd",
            str(theirs.fileno()),
            "--pid",
            str(pid),
            "--program",
            program,
            "--label",
            label,
            pass_fds=(theirs.fileno(),),
            env={**os.environ, **WORKER_ENV},
            stdin=asyncio.subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    link = await open_link(ours, on_frame, on_close)
    return SubprocessWorker(process, link)
