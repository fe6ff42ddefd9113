"""The lasso server's handle on its MPC worker processes (services.lasso.worker.main).

The server spawns a worker with one end of a Unix socket pair (inherited fd, no
listening socket, nothing for another local user to dial), relays frames over it, and
kills the process when the run fails or is cancelled. The worker is a plain subprocess
of the server (`asyncio.create_subprocess_exec`, the interpreter of the server), so
it dies with its link if the server dies, and the server sees its exit asynchronously.

A worker is started *before* its run (`SpareWorker`, docs/adr/0017-spare-mpc-worker.md):
its interpreter start and imports (~0.3 CPU-s, most of a run's MPC start on a busy host)
happen while the server waits for the next run. It learns its party id and run only from
the run's first frame (Start), builds MPyC's runtime then, and serves that one run; the
server starts the next spare once a run ends. A spare that is never used dies with the
server (killed at its stop, or its link ends). The server's first spare is forked from the
server itself before it runs gRPC (`fork_worker`), so it shares the server's imports.

A frozen worker (stopped, or its interpreter stuck) keeps its link open, and the peers'
keepalive only watches the servers: so a thread in the worker writes one heartbeat byte
per HEARTBEAT_S to a pipe (services.lasso.worker.heartbeat), and `wait_silent` returns
when none came for a while.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import setproctitle

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


# (program, on_frame, on_close) → a worker for one run, its link events going to the run.
WorkerFactory = Callable[[str, OnFrame, OnClose], Awaitable[WorkerHandle]]


class SubprocessWorker:
    """A running worker process, the link to it and its heartbeat pipe.

    Link events go to the run `attach`ed to it; before that (a spare) the worker sends
    nothing, and the link closing only marks it unusable.
    """

    def __init__(self, process: asyncio.subprocess.Process | ForkedProcess, heartbeat_fd: int) -> None:
        self.process = process
        self.link: FrameLink | None = None
        self._on_frame: OnFrame | None = None
        self._on_close: OnClose | None = None
        self._link_closed = False
        self._loop = asyncio.get_running_loop()
        self._heartbeat_fd = heartbeat_fd
        self.last_heartbeat = self._loop.time()
        os.set_blocking(heartbeat_fd, False)
        self._loop.add_reader(heartbeat_fd, self._on_heartbeat)

    async def connect(self, sock: socket.socket) -> None:
        self.link = await open_link(sock, self._frame, self._closed)

    def _frame(self, frame: Frame) -> None:
        if self._on_frame is not None:
            self._on_frame(frame)

    def _closed(self, exc: Exception | None) -> None:
        self._link_closed = True
        if self._on_close is not None:
            self._on_close(exc)

    def attach(self, on_frame: OnFrame, on_close: OnClose) -> None:
        """Route the link's frames and its end to one run (once)."""
        self._on_frame, self._on_close = on_frame, on_close
        if self._link_closed:  # died while spare: the run hears it as for any worker
            self._loop.call_soon(on_close, None)

    @property
    def usable(self) -> bool:
        """Still running with its link open (a spare that died cannot take a run)."""
        return self.process.returncode is None and not self._link_closed

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
        assert self.link is not None
        self.link.send(frame)

    async def writable(self) -> None:
        assert self.link is not None
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

    def discard(self) -> None:
        """Kill it and close the link (a spare no run takes); its exit watcher reaps it."""
        self.kill()
        if self.link is not None:
            self.link.close()
        self._close_heartbeat()


class ForkedProcess:
    """What SubprocessWorker uses of asyncio's Process, for a worker this server forked itself
    (`fork_worker`): its exit is watched through a pidfd, and the server reaps it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status)  # -9 when killed, as asyncio says
        self._exited.set_result(self.returncode)

    def kill(self) -> None:
        if self.returncode is None:  # not reaped yet, so the pid is still this worker's
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


@dataclass(frozen=True)
class ForkedWorker:
    """A worker forked before the server's event loop exists, until the loop adopts it."""

    program: str
    pid: int
    sock: socket.socket
    heartbeat_fd: int

    async def adopt(self) -> SubprocessWorker:
        worker = SubprocessWorker(ForkedProcess(self.pid), self.heartbeat_fd)
        await worker.connect(self.sock)
        return worker


def fork_worker(program: str) -> ForkedWorker:
    """Fork a spare worker from this process, which must not run gRPC or other threads yet
    (the lasso server's `main`, before it serves): the worker then shares the modules this
    process imported already (numpy, gmpy2, protobuf, the share decoding, and the worker's
    and the production program's, which services.lasso.server imports for this) instead of
    importing them again: 0.01 CPU-s to be ready instead of 0.24-0.33. It keeps only its
    link, its heartbeat pipe and stdio of the server's file descriptors."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    heartbeat_read, heartbeat_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            keep = sorted({0, 1, 2, theirs.fileno(), heartbeat_write})
            for low, high in zip([-1, *keep], [*keep, os.sysconf("SC_OPEN_MAX")], strict=True):
                if low + 1 < high:  # closerange(n, n) closes every fd from n on (CPython 3.11)
                    os.closerange(low + 1, high)
            os.environ.update(SINGLE_THREAD_ENV)
            _retitle(["-m", "services.lasso.worker.main", "--program", program])
            from services.lasso.worker.main import main  # noqa: PLC0415  (the worker's side only)

            code = main(["--fd", str(theirs.fileno()), "--heartbeat-fd", str(heartbeat_write), "--program", program])
        except BaseException as exc:  # noqa: BLE001  (the child must never return into the server)
            print(f"forked MPC worker failed: {type(exc).__name__}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    theirs.close()
    os.close(heartbeat_write)
    return ForkedWorker(program, pid, ours, heartbeat_read)


def _retitle(args: list[str]) -> None:
    """Show the worker's own command line in ps, not the server's."""
    setproctitle.setproctitle(" ".join([sys.executable, *args]))


async def spawn_worker(program: str) -> SubprocessWorker:
    """Start `python -m services.lasso.worker.main` for `program` and connect the link (not attached yet)."""
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
            "--program",
            program,
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
    worker = SubprocessWorker(process, heartbeat_read)
    try:
        await worker.connect(ours)
    except BaseException:
        ours.close()
        worker.discard()
        raise
    return worker


Spawn = Callable[[str], Coroutine[Any, Any, SubprocessWorker]]


class SpareWorker:
    """At most one worker of `program` started ahead of the next run (module docstring).

    `prepare` starts one in the background; `take` hands it to a run (or spawns a fresh
    worker when there is none, it died, or another program is asked for). The server calls
    `prepare` when it starts and after each run, and `close` when it stops.
    """

    def __init__(self, program: str, spawn: Spawn = spawn_worker) -> None:
        self.program = program
        self._spawn = spawn
        self._spare: asyncio.Task[SubprocessWorker] | None = None
        self._closed = False

    def prepare(self, forked: ForkedWorker | None = None) -> None:
        """Start a spare unless one is waiting or starting (or the server stopped); `forked`:
        a worker `fork_worker` made for this, which becomes the spare instead."""
        if self._spare is None and not self._closed:
            if forked is not None and forked.program == self.program:
                start = forked.adopt()
            else:
                start = self._spawn(self.program)
            self._spare = asyncio.get_running_loop().create_task(start)

    async def take(self, program: str, on_frame: OnFrame, on_close: OnClose) -> SubprocessWorker:
        """A worker for one run, attached to it: the spare when it is usable, else a fresh one."""
        spare, self._spare = self._spare, None
        worker = None
        if spare is not None and program == self.program:
            worker = await self._usable(spare)
        elif spare is not None:
            spare.add_done_callback(_discard_spare)
        if worker is None:
            worker = await self._spawn(program)
        worker.attach(on_frame, on_close)
        return worker

    async def _usable(self, spare: asyncio.Task[SubprocessWorker]) -> SubprocessWorker | None:
        try:
            worker = await asyncio.shield(spare)  # a cancelled run must not leave a half-started spare behind
        except asyncio.CancelledError:
            spare.add_done_callback(_discard_spare)
            raise
        except OSError:
            return None
        if worker.usable:
            return worker
        worker.discard()
        return None

    def close(self) -> None:
        """Kill the spare (the server stops); no new one is started."""
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None and spare.done():
            _discard_spare(spare)
        elif spare is not None:
            spare.add_done_callback(_discard_spare)


def _discard_spare(spare: asyncio.Task[SubprocessWorker]) -> None:
    if not spare.cancelled() and spare.exception() is None:
        spare.result().discard()
