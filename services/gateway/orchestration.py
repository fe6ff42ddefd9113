"""How a run is started, followed and cancelled across the three organisations.

The data owner whose client asks starts the run, once its disclosure floors and the
study's run policy allow it (`governance`):

    1. its own setup (`RunPipeline.prepare_owner`: Paillier key pair — the one prepared
       offline when there is one (`offline`) —, CSV read and committed to, X25519 key); a
       run whose input needs the other owner's approval stops here and asks for it;
    2. PeerStartRun at the helper (with this owner's input commitment), which admits the
       run by its own floors and counts and opens the intersection before any owner uploads;
    3. PeerStartRun at the other owner with this owner's public keys and commitment (and
       the prepared key's id, which that owner checks against the key announced to it);
       that owner admits the run the same way, does its own setup and answers with its
       public keys and commitment, which this owner checks in turn;
    4. its own part of the run (`RunPipeline.run_owner`) with the other owner's keys.

Each party then drives its own part in the background (`RunCoordinator`), reporting
progress to the others with PeerProgress; the first party to fail names the phase, org
and reason, and every party ends the run FAILED with that error. A data owner may cancel
a run at every party. When a data owner's part of a run ends, it prepares the next run's
key pair and pools (`offline.OfflineMaterial`).
"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc
from opentelemetry import trace

from riskmesh.v1 import common_pb2, gateway_pb2, lasso_pb2
from services.gateway import access
from services.gateway.audit import AuditEntry, AuditLog
from services.gateway.codec import input_to_proto, run_error
from services.gateway.errors import PhaseFailure, RequestError
from services.gateway.governance import INTERVAL_SLACK_S, Governance, InputCheck, is_commitment
from services.gateway.offline import OfflineMaterial
from services.gateway.peer_gateways import PeerGateways
from services.gateway.pipeline import OwnerKeys, OwnerSetup, RunPipeline
from services.gateway.runs import RunCoordinator, shared_error, shared_progress
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
        governance: Governance,
        offline: OfflineMaterial,
    ) -> None:
        self.config = config
        self.channels = channels
        self.store = store
        self.audit = audit
        self.peers = peers
        self.runs = runs
        self.governance = governance
        self.offline = offline

    def _pipeline(self, spec: common_pb2.StudySpec, run_id: str) -> RunPipeline:
        floor = self.governance.joined_floor(spec)
        return RunPipeline(self.config, self.channels, spec, run_id, self.runs.report, min_joined=floor)

    def _started(self, caller: Identity, study: StudyRecord, run_id: str, details: Mapping[str, object]) -> AuditEntry:
        return self.audit.entry(str(caller), "run.started", study_id=study.study_id, run_id=run_id, details=details)

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
        self.governance.require_floors(study.spec, caller, "a run of this spec")
        self.governance.require_quota(study, caller)
        run_id, trace_id = new_run_id(study.study_id), current_trace_id()
        started = self._started(caller, study, run_id, {"spec_digest": study.digest, "trace_id": trace_id})
        self.store.create_run(
            run_id, study.study_id, study.digest, started_by=self.config.org, trace_id=trace_id, audit=[started]
        )
        pipeline = self._pipeline(study.spec, run_id)
        parties = [p.org for p in study.spec.parties]
        self.runs.launch(
            run_id,
            parties,
            pipeline,
            lambda: self._then_prepare(study.study_id, self._drive_as_starter(pipeline, study)),
        )
        return self.store.get_run(run_id)

    async def _then_prepare(
        self, study_id: str, part: Coroutine[Any, Any, lasso_pb2.ModelResult]
    ) -> lasso_pb2.ModelResult:
        """This owner's part of a run; when it ends (either way), the next run's keys and pools are made."""
        try:
            return await part
        finally:
            self.offline.prepare_soon(study_id)

    async def _drive_as_starter(self, pipeline: RunPipeline, study: StudyRecord) -> lasso_pb2.ModelResult:
        spec = study.spec
        run_id, study_id = pipeline.run_id, spec.study_id
        mine = await pipeline.prepare_owner(
            study.source_path or "", self.store.study_secret(study_id), self.offline.take_own(study_id)
        )
        own = self.governance.check_input(study, run_id, self.config.org, mine.commitment, starter=True)
        if not own.admitted:
            await self._ask_approval(study, own)
        self.governance.record_input(study_id, run_id, own)
        other = next(o for o in specs.owner_orgs(spec) if o != self.config.org)
        commitment = input_to_proto(own.record)
        # The helper opens the intersection before any owner uploads.
        opening = gateway_pb2.PeerStartRunRequest(
            run_id=run_id, study_id=study_id, spec_digest=study.digest, input=commitment
        )
        await self.peers.start_run(specs.helper_org(spec), opening)
        with_keys = gateway_pb2.PeerStartRunRequest(
            run_id=run_id,
            study_id=study_id,
            spec_digest=study.digest,
            x25519_public_key=mine.keys.x25519_public_key,
            paillier_key=mine.keys.paillier_key,
            input=commitment,
            prepared_key_id=mine.prepared_key_id,
        )
        reply = await self.peers.start_run(other, with_keys)
        try:
            peer_prepared = self.offline.check_peer(study_id, reply.prepared_key_id, reply.paillier_key)
        except RequestError as exc:
            raise PhaseFailure(common_pb2.PHASE_SETUP, other, exc.message, exc.message) from None
        self.offline.note_run(study_id, run_id, bool(mine.prepared_key_id), peer_prepared)
        self._admit_other_input(study, run_id, other, reply.input)
        return await pipeline.run_owner(OwnerKeys(reply.x25519_public_key, reply.paillier_key))

    async def _ask_approval(self, study: StudyRecord, check: InputCheck) -> None:
        """This owner's input needs the other owner's approval: ask for it, and stop the run in setup."""
        refusal = check.refusal(study.study_id)
        try:
            await self.governance.ask_approval(study, check)
        except RequestError as exc:
            refusal += f"; the request did not reach {check.approver} ({exc})"
        raise PhaseFailure(common_pb2.PHASE_SETUP, self.config.org, refusal, refusal)

    def _admit_other_input(
        self, study: StudyRecord, run_id: str, other: str, commitment: gateway_pb2.InputCommitment
    ) -> None:
        """The other owner's input, from its answer: unchanged, or changed with this owner's approval."""
        if commitment.org != other or not is_commitment(commitment.commitment):
            reason = "its answer carries no input commitment"
            raise PhaseFailure(common_pb2.PHASE_SETUP, other, reason, reason)
        theirs = self.governance.check_input(study, run_id, other, commitment.commitment, starter=False)
        if not theirs.admitted:
            self.governance.note_waiting(study, theirs)
            refusal = theirs.refusal(study.study_id)
            raise PhaseFailure(common_pb2.PHASE_SETUP, self.config.org, refusal, refusal)
        self.governance.record_input(study.study_id, run_id, theirs)

    # A peer data owner starts a run -----------------------------------------------------

    async def join(self, request: gateway_pb2.PeerStartRunRequest, caller: Identity) -> OwnerSetup | None:
        """Take part in a run a peer owner starts, if this organisation's floors, the run policy
        and the approvals allow it: the helper opens the intersection, an owner does its setup
        and answers with its public keys and input commitment (None from the helper)."""
        study = self.store.get_study(request.study_id)
        self._admit_starter(study, caller)
        self.governance.require_floors(study.spec, caller, "a run of this spec")
        self.governance.require_quota(study, caller, slack_s=INTERVAL_SLACK_S)
        starter = request.input
        if starter.org != caller.org or not is_commitment(starter.commitment):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the run request carries no input commitment")
        check = self.governance.check_input(study, request.run_id, caller.org, starter.commitment, starter=True)
        if not check.admitted:
            if check.approver == self.config.org:
                self.governance.note_waiting(study, check)
            self.governance.refuse(caller, "run.refused", study.study_id, "", check.refusal(study.study_id))
        owner_here = access.is_owner(study.spec, self.config.org)
        peer_prepared = owner_here and self.offline.check_peer(
            study.study_id, request.prepared_key_id, request.paillier_key
        )
        details = {"spec_digest": request.spec_digest, "org": caller.org}
        entries = [self._started(caller, study, request.run_id, details),
                   self.governance.input_entry(study.study_id, request.run_id, check.record)]  # fmt: skip
        self.store.create_run(
            request.run_id, study.study_id, request.spec_digest, started_by=caller.org,
            interval_slack_s=INTERVAL_SLACK_S, grant_id=check.grant_id, inputs=[check.record], audit=entries,
        )  # fmt: skip
        parties = [p.org for p in study.spec.parties]
        self.runs.remember_parties(request.run_id, parties)
        pipeline = self._pipeline(study.spec, request.run_id)
        mine = await self._set_up(pipeline, study)
        if mine is None:
            self.runs.launch(request.run_id, parties, pipeline, pipeline.run_helper)
        else:
            self.offline.note_run(study.study_id, request.run_id, bool(mine.prepared_key_id), peer_prepared)
            peer = OwnerKeys(request.x25519_public_key, request.paillier_key)
            study_id = study.study_id
            self.runs.launch(
                request.run_id, parties, pipeline, lambda: self._then_prepare(study_id, pipeline.run_owner(peer))
            )
        return mine

    def _admit_starter(self, study: StudyRecord, caller: Identity) -> None:
        access.require_party(study.spec, caller.org)
        if not access.is_owner(study.spec, caller.org):
            raise access.denied("only a data owner starts a run")
        if access.is_owner(study.spec, self.config.org) and not study.source_path:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{self.config.org} has no source_path for the study"
            )

    async def _set_up(self, pipeline: RunPipeline, study: StudyRecord) -> OwnerSetup | None:
        """This organisation's setup for a run a peer starts; a failure ends the run everywhere
        and the starter hears only its category."""
        try:
            if not access.is_owner(study.spec, self.config.org):
                await pipeline.open_helper()
                return None
            mine = await pipeline.prepare_owner(
                study.source_path or "", self.store.study_secret(study.study_id), self.offline.take_own(study.study_id)
            )
            own = self.governance.check_input(study, pipeline.run_id, self.config.org, mine.commitment, starter=False)
            if not own.admitted:
                await self._ask_approval(study, own)
        except PhaseFailure as failure:
            self.offline.prepare_soon(study.study_id)  # this run took the prepared key, if there was one
            await self.runs.fail(pipeline.run_id, run_error(failure), tell_peers=True, category=failure.category)
            await pipeline.drop()
            shared = shared_error(run_error(failure), failure.category)
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{shared.org}: {shared.reason}") from None
        self.governance.record_input(study.study_id, pipeline.run_id, own)
        note = common_pb2.Progress(
            run_id=pipeline.run_id, phase=common_pb2.PHASE_SETUP, org=self.config.org,
            state=common_pb2.RUN_STATE_RUNNING, message="input committed",
        )  # fmt: skip
        await self.runs.report(note, commitment=input_to_proto(own.record))
        return OwnerSetup(mine.keys, mine.commitment, mine.prepared_key_id)

    # Following and cancelling -------------------------------------------------------------

    async def accept_progress(
        self,
        progress: common_pb2.Progress,
        error: common_pb2.RunError | None,
        commitment: gateway_pb2.InputCommitment | None,
        caller: Identity,
    ) -> None:
        """A peer's progress (and, when it failed, its error; after its setup, an owner's input
        commitment) for a run of a study it is party to."""
        run = self.store.get_run(progress.run_id)
        spec = self.store.get_spec(run.digest)
        access.require_party(spec, caller.org)
        if progress.org != caller.org:
            raise access.denied(f"{caller.org} may only report its own progress")
        self.runs.record(shared_progress(progress))
        # Owners get the other owner's commitment in the run request or its answer; the helper here.
        helper_here = not access.is_owner(spec, self.config.org)
        if helper_here and commitment is not None and commitment.org == caller.org:
            self._note_input(run, commitment)
        if error is not None:
            await self.runs.fail(run.run_id, shared_error(error), tell_peers=False)

    def _note_input(self, run: RunRecord, commitment: gateway_pb2.InputCommitment) -> None:
        """Record an owner's commitment this party learns after admitting the run (the helper
        hears the other owner's this way), compared with that owner's previous run here."""
        if not is_commitment(commitment.commitment) or any(i.org == commitment.org for i in run.inputs) or run.terminal:
            return
        study = self.store.get_study(run.study_id)
        if not access.is_owner(study.spec, commitment.org):
            return
        check = self.governance.check_input(study, run.run_id, commitment.org, commitment.commitment, starter=False)
        self.governance.record_input(study.study_id, run.run_id, check)

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
