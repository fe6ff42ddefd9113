"""The MPC worker: one process per run, one MPyC party, talking only to its lasso server.

Why a process per run: `import mpyc.runtime` parses `sys.argv` and builds one
process-wide runtime (program counters, PRSS keys, module globals in sectypes, asyncoro,
mpctools ...), and MPyC stops the event loop when one of its coroutines fails. A fresh
process gives every run a clean runtime built from an explicit argument list, keeps a
failing or CPU-heavy computation away from the server's event loop (health, other runs),
and is the unit the server kills when a run fails.

    python -m services.lasso.worker.main --fd N --heartbeat-fd H --program lasso

The server starts the worker before its run (a spare, services.lasso.worker.handle;
docs/adr/0017-spare-mpc-worker.md): it imports its modules and the program, then blocks
on the link until the run's first frame, Start(party id, run request), arrives — or exits
quietly when the link ends first (the server stopped or discarded it). Only then does it
build MPyC's runtime for that party id: nothing of a run exists in the process before.

The worker inherits one end of a Unix socket pair (fd N) from the server and speaks the
frames of services.lasso.worker.frames on it: it receives the run (Start, Input…, InputEnd),
starts MPyC over services.lasso.worker.transport, runs the program, shuts MPyC down (which
synchronises all parties) and sends the Result. If the link to the server ends, or a
peer is lost, it stops: the server has the last word on the run's status anyway.
Nothing about shares or values is logged; failures are reported by exception type.

MPyC's options come from services.lasso.mpc.runtime (explicit argument list; no
barriers or throttler are used, so nothing busy-waits while a party waits for peers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import traceback
from typing import Any

from google.protobuf.message import DecodeError

from riskmesh.v1 import join_pb2, lasso_pb2
from services.lasso.core.blocks import ShareError, decode_blocks
from services.lasso.core.params import SpecError as RegressionSpecError
from services.lasso.core.parties import PARTIES, PartyError, party_orgs
from services.lasso.core.wire import WireError
from services.lasso.mpc.runtime import create_runtime
from services.lasso.worker.frames import Failed, Frame, FrameDecoder, FrameError, Input, InputEnd, Report, Result, Start
from services.lasso.worker.heartbeat import start_heartbeat
from services.lasso.worker.link import open_link
from services.lasso.worker.program import Program, ProgramError, RunContext, load_program
from services.lasso.worker.transport import FrameSink, MeshTransport, PeerLostError

log = logging.getLogger("riskmesh.lasso.worker")

LOG_FORMAT = "%(asctime)s %(levelname)s lasso-worker {label} %(name)s: %(message)s"
# How often the loop is resumed after MPyC stopped it, to let the session report and end.
RESUMES = 5


class WorkerError(Exception):
    """The run cannot go on at this party (reason without data)."""


def load_runtime(pid: int, parties: int = PARTIES) -> Any:
    """MPyC's process-wide runtime for party `pid`, from an explicit argument list (once per process).

    Built by services.lasso.mpc.runtime (the one place that knows MPyC's options); the
    party addresses it carries are never dialled, since `start` is replaced. What peers
    send is decoded by services.lasso.core.wire (never unpickled; installed by create_runtime).
    """
    if "mpyc.runtime" in sys.modules:
        raise RuntimeError("MPyC's runtime already exists in this process; one run per process")
    return create_runtime(pid, [("localhost", 0)] * parties)


class WorkerSession:
    """The worker's side of one run, on the event loop of MPyC's runtime."""

    def __init__(self, mpc: Any, sink: FrameSink, program: Program) -> None:
        self.mpc = mpc
        self.sink = sink
        self.program = program
        self.transport = MeshTransport(mpc, sink)
        loop = mpc._loop
        self._start: bytes | None = None
        self._inputs: list[join_pb2.GetSharesResponse] = []
        self._inputs_done: asyncio.Future[None] = loop.create_future()
        self.crashed: asyncio.Future[BaseException] = loop.create_future()

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler while the session runs, instead of MPyC's.

        A failing MPyC coroutine surfaces only here (its done-callback re-raises and stops
        the loop), so the first such exception ends the run with its type. Logged by type
        and stack only: the default handler would print messages and reprs holding values.
        """
        exc = context.get("exception")
        if exc is None or isinstance(exc, PeerLostError):
            return  # e.g. receives failed after a peer was lost and never awaited
        log.error(
            "MPC computation failed at party %d: %s\n%s",
            self.mpc.pid,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        if not self.crashed.done():
            self.crashed.set_result(exc)

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Start):
            if self._start is not None and not self._inputs_done.done():
                self._inputs_done.set_exception(WorkerError("the lasso server sent a second run to one worker"))
            self._start = frame.request
        elif isinstance(frame, Input):
            self._inputs.append(join_pb2.GetSharesResponse.FromString(frame.chunk))
        elif isinstance(frame, InputEnd):
            if not self._inputs_done.done():
                self._inputs_done.set_result(None)
        else:
            self.transport.on_frame(frame)

    def on_link_closed(self, exc: Exception | None) -> None:
        self.transport.fail(PeerLostError(self.mpc.pid, "the link to this party's lasso server closed"))
        if not self._inputs_done.done():
            self._inputs_done.set_exception(WorkerError("the lasso server closed the link before the run started"))

    def report(self, phase: int, done: int, total: int) -> None:
        self.transport.counts.phase = phase
        self.sink.send(Report(phase, done, total))

    async def run(self) -> lasso_pb2.ModelResult:
        """Wait for the run, connect, compute, shut down; returns this party's result."""
        await self._inputs_done
        if self._start is None:
            raise WorkerError("no run request before the inputs")
        request = lasso_pb2.RunLassoRequest.FromString(self._start)
        orgs = party_orgs(request.spec)
        context = RunContext(
            request.run_id,
            request.spec,
            self.mpc.pid,
            orgs,
            decode_blocks(request.run_id, self._inputs),
            self.report,
            request.min_joined,
        )
        self._inputs = []
        self.transport.install()
        await self.mpc.start()
        result = await self._unless_failed(self.program(self.mpc, context))
        self.transport.counts.phase = 0  # MPyC's shutdown (a barrier) counts as no phase
        await self._unless_failed(self.mpc.shutdown())
        for traffic in self.transport.counts.frames():
            self.sink.send(traffic)
        return result

    async def _unless_failed(self, work: Any) -> Any:
        """Await `work`, or raise as soon as a peer is lost or an MPyC coroutine failed."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait([task, self.transport.failure, self.crashed], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if self.transport.failure.done():
            raise self.transport.failure.result()
        raise self.crashed.result()


def failure_reason(exc: BaseException) -> str:
    """A reason that names what failed, never a value (messages of foreign exceptions may hold data)."""
    if isinstance(exc, (PeerLostError, WorkerError, ProgramError, ShareError, RegressionSpecError, WireError)):
        return str(exc)
    return f"the MPC computation raised {type(exc).__name__}"


async def serve(mpc: Any, sock: socket.socket, program: Program, start: Start) -> int:
    """Run one session over the socket, `start` already read from it; 0 when the result was sent."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    session: WorkerSession | None = None

    def on_frame(frame: Frame) -> None:
        assert session is not None
        session.on_frame(frame)

    def on_close(exc: Exception | None) -> None:
        if session is not None:
            session.on_link_closed(exc)
        if not closed.done():
            closed.set_result(None)

    link = await open_link(sock, on_frame, on_close)
    session = WorkerSession(mpc, link, program)
    session.on_frame(start)
    loop.set_exception_handler(session.on_loop_exception)
    try:
        result = await session.run()
    except Exception as exc:
        log.error(
            "run failed at party %d: %s\n%s",
            mpc.pid,
            failure_reason(exc),
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        link.send(Failed(failure_reason(exc)))
        code = 1
    else:
        link.send(Result(result.SerializeToString()))
        code = 0
    link.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closed), 5)
    return code


HEAD_BYTES = 5  # a frame's u32 length and u8 kind (services.lasso.worker.frames)


def read_start(sock: socket.socket) -> Start | None:
    """Block until the run's first frame (exactly that frame is read: the rest stays for the
    link); None when the link ends first. Any other first frame is a FrameError."""
    decoder = FrameDecoder()
    head = _read_exactly(sock, HEAD_BYTES)
    if head is None:
        return None
    decoder.feed(head)  # checks the length
    length = int.from_bytes(head[:4], "little")
    body = _read_exactly(sock, length - 1)
    if body is None:
        return None
    (frame,) = decoder.feed(body)
    if not isinstance(frame, Start):
        raise FrameError(f"the first frame on the link is a {type(frame).__name__}, not Start")
    return frame


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def run_label(start: Start) -> str:
    """org/run for log lines, as the server names the run ("run" if the request does not say:
    the session then fails it with a reason)."""
    try:
        request = lasso_pb2.RunLassoRequest.FromString(start.request)
        label = f"{party_orgs(request.spec)[start.pid]}/{request.run_id}"
    except (DecodeError, PartyError, IndexError):
        return "run"
    return label.replace("%", "%%")  # it goes into a logging format


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="riskmesh-lasso-worker", description="one MPC party of one run (started by the lasso server)"
    )
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the lasso server")
    parser.add_argument(
        "--heartbeat-fd", type=int, required=True, help="inherited pipe for heartbeats to the lasso server"
    )
    parser.add_argument("--program", default="lasso", help="MPC program to run")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(label="spare")))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    start_heartbeat(args.heartbeat_fd)
    program = load_program(args.program)  # programs never build MPyC's runtime on import (program.py)
    sock = socket.socket(fileno=args.fd)
    start = read_start(sock)
    if start is None:
        return 0  # no run came: the server stopped or discarded this spare
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(label=run_label(start))))
    mpc = load_runtime(start.pid)
    loop = mpc._loop
    task = loop.create_task(serve(mpc, sock, program, start))
    for _ in range(RESUMES):
        try:
            return loop.run_until_complete(task)
        except RuntimeError:
            # MPyC stopped the loop after one of its coroutines failed; the session saw the
            # exception (on_loop_exception), so resuming lets it report the failure and end.
            if task.done():
                raise
    log.error("MPC computation at party %d did not end after a failure", start.pid)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
