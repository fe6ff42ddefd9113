"""LassoService: a thin adapter from gRPC to services.lasso.runs.

RunLasso(run_id, spec) — from this org's gateway only (rules.py). Fetches this party's
shares from the injected `ShareSource`, starts the run's MPC worker, and streams
Progress (PHASE_INPUT, PHASE_GRAM, PHASE_ITERATIONS, PHASE_REVEAL with done/total),
then one ModelResult: the coefficients for a data owner, an empty result for the helper.
Errors end the stream with a status and a message naming the party and the phase:
INVALID_ARGUMENT (spec), FAILED_PRECONDITION (no shares), ALREADY_EXISTS (run id
reused), RESOURCE_EXHAUSTED (too many runs), UNAVAILABLE (a party lost or unreachable),
ABORTED (a party or this worker stopped the run), PERMISSION_DENIED (a peer refused us).

Exchange — from another org's lasso server only (rules.py). The first frame must be an
MpcHello; the claimed party id must be below this party's (MPyC's topology) and belong
to the org of the caller's certificate in this run's study, else PERMISSION_DENIED.
The stream waits a bounded time for this party's own RunLasso of the run to arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from riskmesh.v1 import common_pb2, lasso_pb2, lasso_pb2_grpc
from services.lasso.core.parties import HELPER_PID, PartyError, party_orgs
from services.lasso.runs import CONNECT_TIMEOUT_S, ChannelFor, Finished, Run, RunFailure, RunRegistry, phase_name
from services.lasso.shares import ShareSource, ShareSourceError
from services.lasso.worker.handle import ForkedWorker, SpareWorker, WorkerFactory
from services.mesh.authz import current_caller
from services.mesh.progress import progress
from services.mesh.status import mapped_errors
from services.study.spec import SpecError, validate

HELLO_TIMEOUT_S = 30.0
# Concurrent MPC runs per lasso server. The parties admit runs independently, so a run
# refused here (RESOURCE_EXHAUSTED) fails only after its whole join: keep this at least
# the number of studies the mesh runs at once (4 concurrent runs failed with 2).
MAX_RUNS = 8
SPEC_STATUSES = ((SpecError, grpc.StatusCode.INVALID_ARGUMENT), (PartyError, grpc.StatusCode.INVALID_ARGUMENT))


tracer = trace.get_tracer("riskmesh.lasso")


def traffic_attributes(run: Run) -> dict[str, str | int]:
    """The run's MPC traffic as span attributes: rounds, messages and payload bytes this party
    sent per phase (`riskmesh.mpc.<rounds|messages|bytes>.<phase>`, phase as in riskmesh.phase;
    "other" is MPyC's start and shutdown). Counts only."""
    attributes: dict[str, str | int] = {"riskmesh.run.id": run.run_id}
    for phase, counts in sorted(run.traffic.items()):
        label = common_pb2.Phase.Name(phase).removeprefix("PHASE_").lower() if phase else "other"
        attributes |= {
            f"riskmesh.mpc.rounds.{label}": counts.rounds,
            f"riskmesh.mpc.messages.{label}": counts.messages,
            f"riskmesh.mpc.bytes.{label}": counts.bytes,
        }
    return attributes


def record_traffic(run: Run) -> None:
    """One `mpc traffic` span in the RunLasso call's trace, for benchmarks and operators."""
    if run.traffic:
        tracer.start_span("mpc traffic", attributes=traffic_attributes(run)).end()


class LassoServicer(lasso_pb2_grpc.LassoServiceServicer):
    def __init__(
        self,
        org: str,
        shares: ShareSource,
        channel_for: ChannelFor,
        *,
        program: str = "lasso",
        spawn: WorkerFactory | None = None,
        max_runs: int = MAX_RUNS,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.org = org
        self.shares = shares
        self.channel_for = channel_for
        self.program = program
        # Production: each run takes a worker started ahead of it (handle.SpareWorker); tests
        # and benchmarks may inject their own factory instead.
        self.spare: SpareWorker | None = None
        if spawn is None:
            self.spare = SpareWorker(program)
            spawn = self.spare.take
        self.spawn = spawn
        self.connect_timeout = connect_timeout
        self.runs = RunRegistry(max_runs)

    def start_workers(self, forked: ForkedWorker | None = None) -> None:
        """Start the spare worker for the next run (on the server's event loop); `forked`: one
        the server forked before it started serving (handle.fork_worker), used instead."""
        if self.spare is not None:
            self.spare.prepare(forked)

    def stop_workers(self) -> None:
        """Kill the spare worker (the server stops; runs kill their own workers)."""
        if self.spare is not None:
            self.spare.close()

    async def RunLasso(
        self, request: lasso_pb2.RunLassoRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lasso_pb2.RunLassoResponse]:
        if not request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        async with mapped_errors(context, SPEC_STATUSES, prefix="the study spec is not valid: "):
            validate(request.spec)
            orgs = party_orgs(request.spec)
        if self.org not in orgs:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{self.org} is not a party of study {request.spec.study_id!r}"
            )
        run = Run(request.run_id, self.org, orgs, self.program, self.spawn, self.channel_for, self.connect_timeout)
        async with mapped_errors(context):  # a RunFailure carries its status
            self.runs.add(run)
        try:
            yield self._progress(request.run_id, common_pb2.PHASE_INPUT, "fetching this party's input shares")
            try:
                blocks = await self.shares.fetch(request.run_id)
            except ShareSourceError as exc:
                run.fail(
                    exc.code, f"{run.party(run.pid)} has no input during {phase_name(common_pb2.PHASE_INPUT)}: {exc}"
                )
                blocks = []
            if run.failure is not None:
                await context.abort(run.failure.code, run.failure.message)
            yield self._progress(request.run_id, common_pb2.PHASE_INPUT, "connecting to the other MPC parties")
            async for event in run.execute(request, blocks):
                if isinstance(event, RunFailure):
                    await context.abort(event.code, event.message)
                elif isinstance(event, Finished):
                    record_traffic(run)
                    result = event.result if run.pid != HELPER_PID else lasso_pb2.ModelResult()
                    yield lasso_pb2.RunLassoResponse(result=result)
                else:
                    yield lasso_pb2.RunLassoResponse(progress=event)
        finally:
            run.close()
            self.runs.remove(run)
            self.start_workers()  # the next run's, now that this one no longer needs the CPU

    def _progress(self, run_id: str, phase: int, message: str) -> lasso_pb2.RunLassoResponse:
        return lasso_pb2.RunLassoResponse(progress=progress(run_id, self.org, phase, message=message))

    async def Exchange(
        self, request_iterator: AsyncIterator[lasso_pb2.ExchangeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lasso_pb2.ExchangeResponse]:
        caller = current_caller.get()
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no caller identity")
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an Exchange starts with an MpcHello")
        if not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an Exchange starts with an MpcHello")
        hello = first.hello
        run = await self.runs.wait_for(hello.run_id, self.connect_timeout)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run {hello.run_id!r} is not running at {self.org}")
        if not hello.pid < run.pid or run.orgs[hello.pid] != caller.org:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller} may not act as MPC party {hello.pid} toward party {run.pid} of run {hello.run_id!r}",
            )
        if run.is_connected(hello.pid):
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"MPC party {hello.pid} is already connected in run {hello.run_id!r}"
            )
        async for response in run.accept(hello.pid, hello.prss_keys, request_iterator, context):
            yield response
