"""Runs in flight at one gateway: the background task per run, progress fan-out to
watchers and peer gateways, and how a run ends (succeeded, failed, cancelled).

A run is driven at every party by its own gateway (`RunPipeline`); the parties keep
each other informed with PeerProgress. Whoever fails first reports the phase, org and
reason; every other party then ends the run FAILED with that error and cancels its own
part, so no party keeps waiting and no partial shares are used (resharing drops them).

What crosses to the other organisations is less than what stays here: progress as a
fraction (done of 100, never a row count), an error as its category ("input validation
failed", never a row, column or value). A peer's text is cleaned, never refused, and a
run's end is written with its audit row in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, join_pb2, join_pb2_grpc, lasso_pb2
from services.gateway.audit import AuditLog, clean_text
from services.gateway.codec import run_error
from services.gateway.errors import IllegalTransitionError, PhaseFailure, UnknownRunError
from services.gateway.pipeline import RunPipeline
from services.gateway.store import TERMINAL_STATES, RunRecord, Store
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.progress import progress
from services.mesh.telemetry import run_outcome

log = logging.getLogger("riskmesh.gateway.runs")

PEER_REPORT_DEADLINE_S = 5.0
# A peer gateway that does not answer for this long ends the run (it died or is cut off).
WATCHDOG_INTERVAL_S = 2.0
WATCHDOG_MISSES = 3
# After a restart, how long to try dropping an interrupted run at this org's resharing server.
DROP_DEADLINE_S = 30.0
# A watcher re-reads the run at least this often, even when no change woke it.
WATCH_POLL_S = 1.0
END_ACTIONS = {
    common_pb2.RUN_STATE_SUCCEEDED: "run.succeeded",
    common_pb2.RUN_STATE_FAILED: "run.failed",
    common_pb2.RUN_STATE_CANCELLED: "run.cancelled",
}

# This org's part of a run, from setup done to the revealed model.
RunBody = Callable[[], Awaitable[lasso_pb2.ModelResult]]
# Progress other organisations see is a fraction: done of FRACTION_TOTAL.
FRACTION_TOTAL = 100


def shared_progress(progress: common_pb2.Progress) -> common_pb2.Progress:
    """The progress event as other organisations may see it: a fraction, not counts."""
    out = common_pb2.Progress()
    out.CopyFrom(progress)
    out.done = min(FRACTION_TOTAL, progress.done * FRACTION_TOTAL // progress.total) if progress.total else 0
    out.total = FRACTION_TOTAL if progress.total else 0
    out.message = clean_text(progress.message)
    return out


def shared_error(error: common_pb2.RunError, category: str | None = None) -> common_pb2.RunError:
    """A run error as other organisations may see it: phase, org and a category only."""
    reason = clean_text(category if category is not None else error.reason)
    return common_pb2.RunError(phase=error.phase, org=clean_text(error.org, 64), reason=reason)


class RunCoordinator:
    def __init__(self, config: OrgConfig, channels: Channels, store: Store, audit: AuditLog) -> None:
        self.config = config
        self.channels = channels
        self.store = store
        self.audit = audit
        self._tasks: dict[str, asyncio.Task] = {}
        self._parties: dict[str, list[str]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task] = set()

    # Progress -----------------------------------------------------------------

    def changed(self, run_id: str) -> asyncio.Event:
        return self._changed.setdefault(run_id, asyncio.Event())

    def _notify(self, run_id: str) -> None:
        event = self._changed.pop(run_id, None)
        if event:
            event.set()

    def record(self, progress: common_pb2.Progress) -> None:
        """Store an event (own or a peer's) and wake the run's watchers. An event without
        a time gets this gateway's clock (before it goes to the peers, so they see it too):
        the console draws each party's phases on a timeline from these."""
        if not progress.HasField("at"):
            progress.at.GetCurrentTime()
        self.store.add_event(progress)
        run = self.store.get_run(progress.run_id)
        if not run.terminal and progress.org == self.config.org and progress.phase and progress.phase != run.phase:
            self.store.update_run(progress.run_id, phase=progress.phase)
        self._notify(progress.run_id)

    async def watch(self, run_id: str) -> AsyncIterator[tuple[common_pb2.Progress | None, RunRecord]]:
        """Every progress event of the run from the first, each with the run as it is now,
        until the run ends; the last item, without progress, is the ended run."""
        seen = 0
        while True:
            changed = self.changed(run_id)
            run = self.store.get_run(run_id)
            for event in self.store.events(run_id, after_seq=seen):
                seen = event.seq
                yield event.progress, run
            if run.terminal:
                yield None, run
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), WATCH_POLL_S)

    async def report(
        self, progress: common_pb2.Progress, commitment: gateway_pb2.InputCommitment | None = None
    ) -> None:
        """This org's own progress: record it and tell the other parties (with this owner's
        input commitment, once, after its setup)."""
        self.record(progress)
        request = gateway_pb2.PeerProgressRequest(progress=progress)
        if commitment is not None:
            request.input.CopyFrom(commitment)
        self._tell_peers(progress.run_id, request)

    def _tell_peers(self, run_id: str, request: gateway_pb2.PeerProgressRequest) -> None:
        request.progress.CopyFrom(shared_progress(request.progress))
        for org in self._parties.get(run_id, []):
            task = asyncio.create_task(self._send_progress(org, request))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_progress(self, org: str, request: gateway_pb2.PeerProgressRequest) -> None:
        stub = gateway_pb2_grpc.GatewayServiceStub(self.channels.get(org, "gateway"))
        try:
            await stub.PeerProgress(request, timeout=PEER_REPORT_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            # Progress is advisory; a failure still reaches the peer through its own services.
            log.info("progress to %s not delivered: %s", org, exc.code().name)

    # Lifecycle ------------------------------------------------------------------

    def launch(
        self,
        run_id: str,
        parties: list[str],
        pipeline: RunPipeline,
        body: RunBody,
    ) -> None:
        """Drive this org's part of a run in the background."""
        self._parties[run_id] = [o for o in parties if o != self.config.org]
        if self.store.get_run(run_id).state == common_pb2.RUN_STATE_PENDING:
            self.store.update_run(run_id, state=common_pb2.RUN_STATE_RUNNING)
        run_outcome("started")
        self._tasks[run_id] = asyncio.create_task(self._drive(run_id, pipeline, body))

    def remember_parties(self, run_id: str, parties: list[str]) -> None:
        self._parties[run_id] = [o for o in parties if o != self.config.org]

    async def _watch_peers(self, run_id: str) -> None:
        """Fail the run when a party's gateway stops answering: its own part is then gone
        too (its services stop with it, or it restarts and fails the run itself)."""
        misses = {org: 0 for org in self._parties.get(run_id, [])}
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            for org in misses:
                stub = gateway_pb2_grpc.GatewayServiceStub(self.channels.get(org, "gateway"))
                try:
                    await stub.GetInfo(gateway_pb2.GetInfoRequest(), timeout=WATCHDOG_INTERVAL_S)
                    misses[org] = 0
                except grpc.aio.AioRpcError:
                    misses[org] += 1
                    if misses[org] >= WATCHDOG_MISSES:
                        phase = self.store.get_run(run_id).phase
                        reason = f"lost contact with {org}'s gateway"
                        raise PhaseFailure(phase, org, reason, reason) from None

    async def _run_watched(self, run_id: str, body: RunBody) -> lasso_pb2.ModelResult:
        work = asyncio.ensure_future(body())
        watchdog = asyncio.ensure_future(self._watch_peers(run_id))
        try:
            await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if watchdog.done():
                work.cancel()
                watchdog.result()  # raises the PhaseFailure
            return work.result()
        finally:
            for task in (work, watchdog):
                task.cancel()
            await asyncio.gather(work, watchdog, return_exceptions=True)

    async def _drive(self, run_id: str, pipeline: RunPipeline, body: RunBody) -> None:
        try:
            result = await self._run_watched(run_id, body)
            if result.coefficients:
                self.store.put_result(run_id, result)
            self._finish(run_id, common_pb2.RUN_STATE_SUCCEEDED, joined=result.joined or pipeline.joined)
            await self.report(
                progress(
                    run_id,
                    self.config.org,
                    common_pb2.PHASE_REVEAL,
                    message="done",
                    state=common_pb2.RUN_STATE_SUCCEEDED,
                )
            )
        except PhaseFailure as failure:
            await self.fail(run_id, run_error(failure), tell_peers=True, category=failure.category)
        except asyncio.CancelledError:
            pass  # whoever cancelled has set the final state
        except Exception as exc:  # noqa: BLE001 - any bug must still end the run, without data in the reason
            log.exception("run %s failed unexpectedly", run_id)
            phase = self.store.get_run(run_id).phase
            error = common_pb2.RunError(
                phase=phase, org=self.config.org, reason=f"internal error ({type(exc).__name__})"
            )
            await self.fail(run_id, error, tell_peers=True)
        finally:
            self._tasks.pop(run_id, None)
            await pipeline.drop()

    def _finish(
        self,
        run_id: str,
        state: common_pb2.RunState.ValueType,
        joined: int = 0,
        error: common_pb2.RunError | None = None,
    ) -> bool:
        """Move to a terminal state once, with its audit row; False when the run had already ended."""
        current = self.store.get_run(run_id)
        if current.terminal:
            return False
        details: dict[str, object] = {"joined": joined or current.joined}
        if error is not None:
            org, reason = clean_text(error.org, 64), clean_text(error.reason, 500)
            error = common_pb2.RunError(phase=error.phase, org=org, reason=reason)
            details.update(phase=common_pb2.Phase.Name(error.phase), org=error.org, reason=clean_text(error.reason))
        actor = f"spiffe://{self.config.org}/gateway"
        entry = self.audit.entry(actor, END_ACTIONS[state], study_id=current.study_id, run_id=run_id, details=details)
        try:
            self.store.update_run(run_id, state=state, error=error, joined=joined or None, audit=entry)
        except IllegalTransitionError:
            return False
        run_outcome(END_ACTIONS[state].removeprefix("run."))
        self._notify(run_id)
        return True

    async def fail(
        self, run_id: str, error: common_pb2.RunError, tell_peers: bool, category: str | None = None
    ) -> None:
        """End the run FAILED here with `error` (kept whole in this org's record); the other
        parties, when told, hear only the phase, the org and `category` (default: the reason)."""
        if not self._finish(run_id, common_pb2.RUN_STATE_FAILED, error=error):
            return
        phase = common_pb2.Phase.Name(error.phase)
        log.warning("run %s failed in %s at %s: %s", run_id, phase, error.org, error.reason)  # stays here
        self._cancel_task(run_id)
        if tell_peers:
            failed = progress(run_id, self.config.org, error.phase, message="failed", state=common_pb2.RUN_STATE_FAILED)
            shared = shared_error(error, category)
            self._tell_peers(run_id, gateway_pb2.PeerProgressRequest(progress=failed, error=shared))

    def cancel(self, run_id: str, reason: str) -> bool:
        error = common_pb2.RunError(phase=self.store.get_run(run_id).phase, org=self.config.org, reason=reason)
        done = self._finish(run_id, common_pb2.RUN_STATE_CANCELLED, error=error)
        self._cancel_task(run_id)
        return done

    def _cancel_task(self, run_id: str) -> None:
        task = self._tasks.get(run_id)
        if task and task is not asyncio.current_task():
            task.cancel()

    async def announce_interrupted(self, run_ids: list[str]) -> None:
        """After a restart: tell the other parties of each interrupted run that it failed
        here, and drop its keys and shares at this org's resharing server, which kept
        running (and may even have completed the shares) while this gateway was gone."""
        for run_id in run_ids:
            run = self.store.get_run(run_id)
            spec = self.store.get_spec(run.digest)
            self._parties[run_id] = [p.org for p in spec.parties if p.org != self.config.org]
            failed = progress(run_id, self.config.org, run.phase, message="failed", state=common_pb2.RUN_STATE_FAILED)
            error = run.error or common_pb2.RunError(phase=run.phase, org=self.config.org, reason="")
            self._tell_peers(run_id, gateway_pb2.PeerProgressRequest(progress=failed, error=shared_error(error)))
            task = asyncio.create_task(self._drop_shares(run_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _drop_shares(self, run_id: str) -> None:
        stub = join_pb2_grpc.ResharingServiceStub(self.channels.get(self.config.org, "resharing"))
        try:
            await stub.DropRun(join_pb2.DropRunRequest(run_id=run_id), timeout=DROP_DEADLINE_S, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            # A resharing server that is down (or restarted) holds nothing of the run.
            log.info("interrupted run %s not dropped at resharing: %s", run_id, exc.code().name)

    def is_terminal(self, run_id: str) -> bool:
        try:
            return self.store.get_run(run_id).state in TERMINAL_STATES
        except UnknownRunError:
            return False

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()) + list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
