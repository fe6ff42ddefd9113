"""How a run is started, followed and cancelled across the three organisations.

The data owner whose client asks starts the run:

    1. its own setup (`RunPipeline.prepare_owner`: Paillier key pair, CSV read, X25519 key);
    2. PeerStartRun at the helper, which opens the intersection before any owner uploads;
    3. PeerStartRun at the other owner with this owner's public keys; that owner does its
       own setup and answers with its public keys;
    4. its own part of the run (`RunPipeline.run_owner`) with the other owner's keys.

Each party then drives its own part in the background (`RunCoordinator`), reporting
progress to the others with PeerProgress; the first party to fail names the phase, org
and reason, and every party ends the run FAILED with that error. A data owner may cancel
a run at every party.
"""

from __future__ import annotations

import uuid

import grpc
from opentelemetry import trace

from riskmesh.v1 import common_pb2, gateway_pb2, lasso_pb2
from services.gateway import access
from services.gateway.audit import AuditLog
from services.gateway.codec import run_error
from services.gateway.errors import PhaseFailure, RequestError
from services.gateway.peer_gateways import PeerGateways
from services.gateway.pipeline import OwnerKeys, RunPipeline
from services.gateway.runs import RunCoordinator
from services.gateway.store import RunRecord, Store, StudyRecord
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.mesh.peers import Channels
from services.study import spec as specs


def new_run_id(study_id: str) -> str:
    return f"{study_id}-{uuid.uuid4().hex[:12]}"


def current_trace_id() -> str:
    """The trace of the request being served: the whole run is one trace across the parties."""
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


class RunOrchestrator:
    def __init__(
        self,
        config: OrgConfig,
        channels: Channels,
        store: Store,
        audit: AuditLog,
        peers: PeerGateways,
        runs: RunCoordinator,
    ) -> None:
        self.config = config
        self.channels = channels
        self.store = store
        self.audit = audit
        self.peers = peers
        self.runs = runs

    def _pipeline(self, spec: common_pb2.StudySpec, run_id: str) -> RunPipeline:
        return RunPipeline(self.config, self.channels, spec, run_id, self.runs.report)

    # This organisation starts a run --------------------------------------------------

    async def start(self, study_id: str, caller: Identity) -> RunRecord:
        """Start a run of the study's current digest; it goes on in the background."""
        study = self.store.get_study(study_id)
        access.require_owner(study.spec, self.config.org, "starting a run")
        if not study.source_path:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this organisation has no source_path for the study: approve it with --source",
            )
        run_id, trace_id = new_run_id(study.study_id), current_trace_id()
        self.store.create_run(run_id, study.study_id, study.digest, started_by=self.config.org, trace_id=trace_id)
        details = {"spec_digest": study.digest, "trace_id": trace_id}
        self.audit.append(str(caller), "run.started", study_id=study.study_id, run_id=run_id, details=details)
        pipeline = self._pipeline(study.spec, run_id)
        parties = [p.org for p in study.spec.parties]
        self.runs.launch(run_id, parties, pipeline, lambda: self._drive_as_starter(pipeline, study))
        return self.store.get_run(run_id)

    async def _drive_as_starter(self, pipeline: RunPipeline, study: StudyRecord) -> lasso_pb2.ModelResult:
        spec = study.spec
        mine = await pipeline.prepare_owner(study.source_path or "")
        other = next(o for o in specs.owner_orgs(spec) if o != self.config.org)
        run_id, study_id = pipeline.run_id, spec.study_id
        # The helper opens the intersection before any owner uploads.
        opening = gateway_pb2.PeerStartRunRequest(run_id=run_id, study_id=study_id, spec_digest=study.digest)
        await self.peers.start_run(specs.helper_org(spec), opening)
        with_keys = gateway_pb2.PeerStartRunRequest(
            run_id=run_id,
            study_id=study_id,
            spec_digest=study.digest,
            x25519_public_key=mine.x25519_public_key,
            paillier_key=mine.paillier_key,
        )
        reply = await self.peers.start_run(other, with_keys)
        return await pipeline.run_owner(OwnerKeys(reply.x25519_public_key, reply.paillier_key))

    # A peer data owner starts a run -----------------------------------------------------

    async def join(self, request: gateway_pb2.PeerStartRunRequest, caller: Identity) -> OwnerKeys | None:
        """Take part in a run a peer owner starts: the helper opens the intersection, an owner
        does its setup and answers with its public keys (None from the helper)."""
        study = self.store.get_study(request.study_id)
        self._admit_starter(study, caller)
        self.store.create_run(request.run_id, study.study_id, request.spec_digest, started_by=caller.org)
        details = {"spec_digest": request.spec_digest, "org": caller.org}
        self.audit.append(str(caller), "run.started", study_id=study.study_id, run_id=request.run_id, details=details)
        parties = [p.org for p in study.spec.parties]
        self.runs.remember_parties(request.run_id, parties)
        pipeline = self._pipeline(study.spec, request.run_id)
        mine = await self._set_up(pipeline, study)
        if mine is None:
            self.runs.launch(request.run_id, parties, pipeline, pipeline.run_helper)
        else:
            peer = OwnerKeys(request.x25519_public_key, request.paillier_key)
            self.runs.launch(request.run_id, parties, pipeline, lambda: pipeline.run_owner(peer))
        return mine

    def _admit_starter(self, study: StudyRecord, caller: Identity) -> None:
        access.require_party(study.spec, caller.org)
        if not access.is_owner(study.spec, caller.org):
            raise access.denied("only a data owner starts a run")
        if access.is_owner(study.spec, self.config.org) and not study.source_path:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{self.config.org} has no source_path for the study"
            )

    async def _set_up(self, pipeline: RunPipeline, study: StudyRecord) -> OwnerKeys | None:
        """This organisation's setup for a run a peer starts; a failure ends the run everywhere."""
        try:
            if not access.is_owner(study.spec, self.config.org):
                await pipeline.open_helper()
                return None
            return await pipeline.prepare_owner(study.source_path or "")
        except PhaseFailure as failure:
            await self.runs.fail(pipeline.run_id, run_error(failure), tell_peers=True)
            await pipeline.drop()
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, failure.reason) from None

    # Following and cancelling -------------------------------------------------------------

    async def accept_progress(
        self, progress: common_pb2.Progress, error: common_pb2.RunError | None, caller: Identity
    ) -> None:
        """A peer's progress (and, when it failed, its error) for a run of a study it is party to."""
        run = self.store.get_run(progress.run_id)
        access.require_party(self.store.get_spec(run.digest), caller.org)
        if progress.org != caller.org:
            raise access.denied(f"{caller.org} may only report its own progress")
        self.runs.record(progress)
        if error is not None:
            await self.runs.fail(run.run_id, error, tell_peers=False)

    async def cancel(self, run_id: str, caller: Identity) -> RunRecord:
        """A data owner here cancels a run, here and at the other parties."""
        run = self.store.get_run(run_id)
        spec = self.store.get_spec(run.digest)
        access.require_owner(spec, self.config.org, "cancelling a run")
        if run.terminal:
            state = common_pb2.RunState.Name(run.state)
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} already ended ({state})")
        reason = f"cancelled by {self.config.org}"
        self.runs.cancel(run.run_id, reason)
        self.audit.append(str(caller), "run.cancel_requested", study_id=run.study_id, run_id=run.run_id)
        await self.peers.cancel_run(self.peers.others(spec), run.run_id, reason)
        return self.store.get_run(run.run_id)

    def accept_cancel(self, run_id: str, caller: Identity) -> None:
        """A peer data owner cancelled the run."""
        run = self.store.get_run(run_id)
        if not access.is_owner(self.store.get_spec(run.digest), caller.org):
            raise access.denied("only a data owner cancels a run")
        self.runs.cancel(run.run_id, f"cancelled by {caller.org}")
