"""One run at one lasso server: the worker process, the peer streams, and who ends it.

    gateway ──RunLasso──► server ──frames──► worker (MPyC)
                            ▲ │
               Exchange ────┘ └──── Exchange   (to/from the other two lasso servers)

The `Run` relays frames: the worker's `Send(peer, pc, payload)` goes into that peer's
stream outbox, a peer's message becomes `Recv` for the worker; `Dial` from the worker
(with its PRSS keys) opens a stream to a party above; an accepted stream becomes
`PeerUp` with the dialer's keys. The worker's `Report`s become Progress events, its
`Traffic` counts (rounds, messages, bytes per phase) are kept in `traffic`, and its
`Result` ends the run.

The run fails exactly once, for the first of: a peer stream ending other than by
MPyC's shutdown, the worker failing or exiting without a result, peers not all
connected within `connect_timeout`, or the caller going away. Failing aborts every
stream of the run (so the other parties fail within a round trip rather than at a
keepalive timeout), tells the worker and kills it, and hands RunLasso a `RunFailure`
naming the party and the phase — never data.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.core import wire
from services.lasso.core.blocks import ShareBlock, encode_block
from services.lasso.exchange import Outbox, accept, dial
from services.lasso.worker.frames import (
    Close,
    Dial,
    Failed,
    Frame,
    Input,
    InputEnd,
    PeerClosed,
    PeerLost,
    PeerUp,
    Recv,
    Report,
    Result,
    Send,
    Start,
    Traffic,
)
from services.lasso.worker.handle import WorkerFactory, WorkerHandle
from services.mesh.progress import progress
from services.mesh.status import StatusError

log = logging.getLogger("riskmesh.lasso.runs")

CONNECT_TIMEOUT_S = 60.0
# After a failure, dialled streams get this long to deliver their MpcEnd with the reason.
ABORT_GRACE_S = 2.0
# Progress within a phase is passed on at most this often (the worker may report every iteration).
PROGRESS_INTERVAL_S = 0.5
# A worker whose heartbeat thread was silent this long is frozen (stopped, or its interpreter stuck).
WORKER_SILENCE_S = 10.0
# A worker whose link closed is killed if it has not exited after this long.
WORKER_EXIT_GRACE_S = 2.0
# What peers may send before this party's worker exists (their first rounds; legitimately a few MB).
MAX_EARLY_BYTES = 128 * 1024 * 1024
# Statuses with which a peer refuses a stream (rather than being lost).
REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class RunFailure(StatusError):
    """How a run ended badly: the gRPC status for RunLasso and a message without data."""


@dataclass(frozen=True)
class Finished:
    result: lasso_pb2.ModelResult


RunEvent = common_pb2.Progress | Finished | RunFailure
ChannelFor = Callable[[str], grpc.aio.Channel]


def phase_name(phase: int) -> str:
    return common_pb2.Phase.Name(phase)


class Run:
    """The server side of one party's run (see the module docstring)."""

    def __init__(
        self,
        run_id: str,
        org: str,
        orgs: Sequence[str],
        program: str,
        spawn: WorkerFactory,
        channel_for: ChannelFor,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.run_id = run_id
        self.org = org
        self.orgs = tuple(orgs)
        self.pid = self.orgs.index(org)
        self.program = program
        self.phase = common_pb2.PHASE_INPUT
        self.failure: RunFailure | None = None
        self.events: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._spawn = spawn
        self._channel_for = channel_for
        self._connect_timeout = connect_timeout
        self._worker: WorkerHandle | None = None
        self._for_worker: list[Frame] = []  # frames that arrive before the worker exists
        self._early_bytes = 0  # payload bytes in _for_worker
        self._outboxes: dict[int, Outbox] = {}
        self._up: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._result: lasso_pb2.ModelResult | None = None
        self.traffic: dict[int, Traffic] = {}  # phase → what this party sent in it (counts only)
        self._link_closed = asyncio.Event()
        self._last_progress = float("-inf")
        self._context = contextvars.copy_context()  # the RunLasso call's (trace) context, for the stream tasks

    # Party naming for messages ----------------------------------------------

    def party(self, pid: int) -> str:
        return f"MPC party {pid} ({self.orgs[pid]})" if 0 <= pid < len(self.orgs) else f"MPC party {pid}"

    @property
    def finished(self) -> bool:
        return self.failure is not None or self._result is not None

    # Lifecycle ----------------------------------------------------------------

    async def execute(
        self, request: lasso_pb2.RunLassoRequest, blocks: Sequence[ShareBlock]
    ) -> AsyncIterator[RunEvent]:
        """Start the worker with the run and its shares; yield events until the end."""
        if self.failure is not None:  # a peer ended the run while this party fetched its shares
            yield self.failure
            return
        try:
            self._worker = await self._spawn(self.program, self._on_worker_frame, self._on_worker_closed)
        except OSError as exc:
            self.fail(
                grpc.StatusCode.INTERNAL,
                f"the MPC worker of {self.party(self.pid)} could not start ({type(exc).__name__})",
            )
            yield self.events.get_nowait()
            return
        self._worker.send(Start(self.pid, request.SerializeToString()))
        for block in blocks:
            for message in encode_block(self.run_id, block):
                self._worker.send(Input(message.SerializeToString()))
        self._worker.send(InputEnd())
        for frame in self._for_worker:
            self._worker.send(frame)
        self._for_worker = []
        self._spawn_task(self._watch_connect())
        self._spawn_task(self._watch_worker(self._worker))
        self._spawn_task(self._watch_heartbeat(self._worker))
        while True:
            event = await self.events.get()
            yield event
            if isinstance(event, (Finished, RunFailure)):
                return

    def close(self) -> None:
        """Release everything (after the end, or when RunLasso is cancelled)."""
        if not self.finished:
            self.fail(grpc.StatusCode.CANCELLED, f"the run was cancelled at {self.org} during {phase_name(self.phase)}")
        if self._worker is not None:
            self._worker.kill()
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            loop.call_later(ABORT_GRACE_S, task.cancel)

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """End the run with this failure, once: abort the streams, stop the worker, tell RunLasso."""
        if self.finished:
            return
        self.failure = RunFailure(code, message)
        log.warning("run %s failed at %s: %s", self.run_id, self.org, message)
        for outbox in self._outboxes.values():
            outbox.abort(message)
        if self._worker is not None:
            self._worker.send(PeerLost(self.pid, message))
            self._worker.kill()
        self.events.put_nowait(self.failure)

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, context=self._context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        missing = [pid for pid in range(len(self.orgs)) if pid != self.pid and pid not in self._up]
        if missing:
            self.fail(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.party(missing[0])} did not connect within {self._connect_timeout:.0f} s "
                f"during {phase_name(self.phase)}",
            )

    async def _watch_worker(self, worker: WorkerHandle) -> None:
        """After the link closed (so every frame the worker sent was read), its exit ends the run."""
        await self._link_closed.wait()
        try:
            code = await asyncio.wait_for(worker.wait(), WORKER_EXIT_GRACE_S)
        except TimeoutError:
            worker.kill()
            code = None
        if not self.finished:
            self.fail(
                grpc.StatusCode.ABORTED,
                f"the MPC worker of {self.party(self.pid)} exited (code {code}) during {phase_name(self.phase)}",
            )

    async def _watch_heartbeat(self, worker: WorkerHandle) -> None:
        await worker.wait_silent(WORKER_SILENCE_S)
        if not self.finished:
            self.fail(
                grpc.StatusCode.ABORTED,
                f"the MPC worker of {self.party(self.pid)} stopped responding "
                f"(no heartbeat for {WORKER_SILENCE_S:.0f} s) during {phase_name(self.phase)}",
            )

    # Frames from the worker ---------------------------------------------------

    def _on_worker_frame(self, frame: Frame) -> None:
        if isinstance(frame, Send):
            outbox = self._outboxes.get(frame.peer)
            if outbox is None:
                self.fail(
                    grpc.StatusCode.INTERNAL, f"the MPC worker sent to {self.party(frame.peer)} before it connected"
                )
                return
            outbox.put(frame.pc, frame.payload)
        elif isinstance(frame, Report):
            self._report(frame)
        elif isinstance(frame, Traffic):
            self.traffic[frame.phase] = frame
        elif isinstance(frame, Dial):
            self._dial(frame.peer, frame.prss_keys)
        elif isinstance(frame, Close):
            outbox = self._outboxes.get(frame.peer)
            if outbox is not None:
                outbox.end()
        elif isinstance(frame, Result):
            self._finish(lasso_pb2.ModelResult.FromString(frame.result))
        elif isinstance(frame, Failed):
            self.fail(
                grpc.StatusCode.ABORTED,
                f"{self.party(self.pid)} stopped during {phase_name(self.phase)}: {frame.reason}",
            )

    def _on_worker_closed(self, exc: Exception | None) -> None:
        self._link_closed.set()

    def _report(self, frame: Report) -> None:
        """A Progress event, at most every PROGRESS_INTERVAL_S within a phase (phase starts and ends always)."""
        if frame.phase == common_pb2.PHASE_UNSPECIFIED or frame.phase not in common_pb2.Phase.values():
            return
        now = asyncio.get_running_loop().time()
        routine = frame.phase == self.phase and 0 < frame.done < frame.total
        self.phase = frame.phase
        if routine and now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        self.events.put_nowait(progress(self.run_id, self.org, frame.phase, frame.done, frame.total))

    def _finish(self, result: lasso_pb2.ModelResult) -> None:
        if self.finished:
            return
        self._result = result
        self.events.put_nowait(Finished(result))

    def _send_to_worker(self, frame: Frame) -> None:
        if self._worker is None:
            self._for_worker.append(frame)
        else:
            self._worker.send(frame)

    # Streams --------------------------------------------------------------------

    def _dial(self, peer: int, prss_keys: bytes) -> None:
        if not self.pid < peer < len(self.orgs) or peer in self._outboxes:
            self.fail(grpc.StatusCode.INTERNAL, f"the MPC worker asked to dial {self.party(peer)}, which it must not")
            return
        outbox = Outbox()
        self._outboxes[peer] = outbox
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the Exchange joins the run's trace at the acceptor
        self._spawn_task(
            dial(self, peer, prss_keys, self._channel_for(self.orgs[peer]), outbox, tuple(carrier.items()))
        )

    def accept(
        self,
        peer: int,
        prss_keys: bytes,
        requests: AsyncIterator[lasso_pb2.ExchangeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[lasso_pb2.ExchangeResponse]:
        """An Exchange from party `peer` (< this party), its hello already checked."""
        outbox = Outbox()
        self._outboxes[peer] = outbox
        if self.finished:
            outbox.abort(f"the run already ended at {self.org}")
        return accept(self, peer, prss_keys, requests, context, outbox)

    def is_connected(self, peer: int) -> bool:
        return peer in self._outboxes

    # StreamOwner ----------------------------------------------------------------

    def deliver(self, peer: int, pc: int, payload: bytes) -> None:
        """A peer's MPC message: its header is checked here, the rest by the worker that awaits it."""
        if self.failure is not None:
            return
        try:
            wire.check(payload)
        except wire.WireError as exc:
            self.fail(
                grpc.StatusCode.ABORTED,
                f"{self.party(peer)} sent a malformed MPC message during {phase_name(self.phase)}: {exc}",
            )
            return
        if self._worker is None:
            self._early_bytes += len(payload)
            if self._early_bytes > MAX_EARLY_BYTES:
                self.fail(
                    grpc.StatusCode.ABORTED,
                    f"{self.party(peer)} sent more than {MAX_EARLY_BYTES >> 20} MiB before this party's worker "
                    f"started, during {phase_name(self.phase)}",
                )
                return
        self._send_to_worker(Recv(peer, pc, payload))

    async def writable(self) -> None:
        if self._worker is not None:
            await self._worker.writable()

    def peer_up(self, peer: int, prss_keys: bytes) -> None:
        self._up.add(peer)
        self._send_to_worker(PeerUp(peer, prss_keys))

    def peer_closed(self, peer: int) -> None:
        self._send_to_worker(PeerClosed(peer))

    def peer_ended(self, peer: int, reason: str) -> None:
        """The peer's run failed first; its reason names the root cause."""
        self.fail(
            grpc.StatusCode.ABORTED,
            f"{self.party(peer)} ended the run during {phase_name(self.phase)}: {reason or 'no reason given'}",
        )

    def peer_lost(self, peer: int, code: grpc.StatusCode, details: str) -> None:
        if code in REFUSALS:
            self.fail(
                code, f"{self.party(peer)} refused the stream during {phase_name(self.phase)} ({code.name}: {details})"
            )
        else:
            self.fail(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.party(peer)} was lost during {phase_name(self.phase)} ({code.name})",
            )


class RunRegistry:
    """The runs of one lasso server, by run id; Exchange streams wait here for their run."""

    def __init__(self, max_runs: int) -> None:
        self.max_runs = max_runs
        self._runs: dict[str, Run] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._changed = asyncio.Event()

    def add(self, run: Run) -> None:
        if run.run_id in self._runs or run.run_id in self._ended:
            raise RunFailure(
                grpc.StatusCode.ALREADY_EXISTS, f"run {run.run_id!r} already ran or is running at this party"
            )
        if len(self._runs) >= self.max_runs:
            raise RunFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"this party already runs {len(self._runs)} MPC runs (the limit)"
            )
        self._runs[run.run_id] = run
        self._changed.set()
        self._changed = asyncio.Event()

    def remove(self, run: Run) -> None:
        if self._runs.get(run.run_id) is run:
            del self._runs[run.run_id]
            self._ended[run.run_id] = None
            while len(self._ended) > 1024:
                self._ended.popitem(last=False)

    def __len__(self) -> int:
        return len(self._runs)

    async def wait_for(self, run_id: str, timeout: float) -> Run | None:
        """The run once this party's RunLasso has registered it; None after `timeout` or if it already ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while run_id not in self._runs:
            remaining = deadline - loop.time()
            if run_id in self._ended or remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self._runs[run_id]
