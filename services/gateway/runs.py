"""Runs in flight at one gateway: the background task per run, progress fan-out to
watchers and peer gateways, and how a run ends (succeeded, failed, cancelled).

A run is driven at every party by its own gateway (`RunPipeline`); the parties keep
each other informed with PeerProgress. Whoever fails first reports the phase, org and
reason; every other party then ends the run FAILED with that error and cancels its own
part, so no party keeps waiting and no partial shares are used (resharing drops them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, join_pb2, join_pb2_grpc, lasso_pb2
from services.gateway.audit import AuditLog
from services.gateway.pipeline import PhaseFailure, RunPipeline
from services.gateway.store import TERMINAL_STATES, IllegalTransitionError, Store, UnknownRunError
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.telemetry import run_outcome

log = logging.getLogger("riskmesh.gateway.runs")

PEER_REPORT_DEADLINE_S = 5.0
# A peer gateway that does not answer for this long ends the run (it died or is cut off).
WATCHDOG_INTERVAL_S = 2.0
WATCHDOG_MISSES = 3
# After a restart, how long to try dropping an interrupted run at this org's resharing server.
DROP_DEADLINE_S = 30.0


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
        """Store an event (own or a peer's) and wake the run's watchers."""
        self.store.add_event(progress)
        run = self.store.get_run(progress.run_id)
        if not run.terminal and progress.org == self.config.org and progress.phase and progress.phase != run.phase:
            self.store.update_run(progress.run_id, phase=progress.phase)
        self._notify(progress.run_id)

    async def report(self, progress: common_pb2.Progress) -> None:
        """This org's own progress: record it and tell the other parties."""
        self.record(progress)
        self._tell_peers(progress.run_id, gateway_pb2.PeerProgressRequest(progress=progress))

    def _tell_peers(self, run_id: str, request: gateway_pb2.PeerProgressRequest) -> None:
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

    def launch(self, run_id: str, parties: list[str], pipeline: RunPipeline, body: Callable[[], Awaitable[lasso_pb2.ModelResult]]) -> None:
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
                        raise PhaseFailure(phase, org, f"lost contact with {org}'s gateway")

    async def _run_watched(self, run_id: str, body: Callable[[], Awaitable[lasso_pb2.ModelResult]]) -> lasso_pb2.ModelResult:
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

    async def _drive(self, run_id: str, pipeline: RunPipeline, body: Callable[[], Awaitable[lasso_pb2.ModelResult]]) -> None:
        try:
            result = await self._run_watched(run_id, body)
            if result.coefficients:
                self.store.put_result(run_id, result)
            self._finish(run_id, common_pb2.RUN_STATE_SUCCEEDED, joined=result.joined or pipeline.joined)
            await self.report(common_pb2.Progress(run_id=run_id, phase=common_pb2.PHASE_REVEAL, org=self.config.org, state=common_pb2.RUN_STATE_SUCCEEDED, message="done"))
        except PhaseFailure as failure:
            await self.fail(run_id, failure.to_proto(), tell_peers=True)
        except asyncio.CancelledError:
            pass  # whoever cancelled has set the final state
        except Exception as exc:  # noqa: BLE001 - any bug must still end the run, without data in the reason
            log.exception("run %s failed unexpectedly", run_id)
            await self.fail(run_id, common_pb2.RunError(phase=self.store.get_run(run_id).phase, org=self.config.org, reason=f"internal error ({type(exc).__name__})"), tell_peers=True)
        finally:
            self._tasks.pop(run_id, None)
            await pipeline.drop()

    def _finish(self, run_id: str, state: int, joined: int = 0, error: common_pb2.RunError | None = None) -> bool:
        """Move to a terminal state once; False when the run had already ended."""
        try:
            run = self.store.update_run(run_id, state=state, error=error, joined=joined or None)
        except IllegalTransitionError:
            return False
        action = {common_pb2.RUN_STATE_SUCCEEDED: "run.succeeded", common_pb2.RUN_STATE_FAILED: "run.failed", common_pb2.RUN_STATE_CANCELLED: "run.cancelled"}[state]
        details: dict[str, object] = {"joined": run.joined}
        if error is not None:
            details.update(phase=common_pb2.Phase.Name(error.phase), org=error.org, reason=error.reason[:200])
        self.audit.append(f"spiffe://{self.config.org}/gateway", action, study_id=run.study_id, run_id=run_id, details=details)
        run_outcome(action.removeprefix("run."))
        self._notify(run_id)
        return True

    async def fail(self, run_id: str, error: common_pb2.RunError, tell_peers: bool) -> None:
        if not self._finish(run_id, common_pb2.RUN_STATE_FAILED, error=error):
            return
        log.warning("run %s failed in %s at %s", run_id, common_pb2.Phase.Name(error.phase), error.org)
        self._cancel_task(run_id)
        if tell_peers:
            progress = common_pb2.Progress(run_id=run_id, phase=error.phase, org=self.config.org, state=common_pb2.RUN_STATE_FAILED, message="failed")
            self._tell_peers(run_id, gateway_pb2.PeerProgressRequest(progress=progress, error=error))

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
            progress = common_pb2.Progress(run_id=run_id, phase=run.phase, org=self.config.org, state=common_pb2.RUN_STATE_FAILED, message="failed")
            self._tell_peers(run_id, gateway_pb2.PeerProgressRequest(progress=progress, error=run.error))
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
