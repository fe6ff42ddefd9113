"""GatewayService: a thin adapter between gRPC and the gateway's cores (spec, store,
audit, predict) and its run coordination.

Who may call what is decided twice: the authorisation table (services/gateway/rules.py)
admits only the org's own clients or peer gateways per method; here, each Peer* call is
further checked against the study (the caller must be a party, an owner where it
matters), and results go to data owners only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

import grpc
from opentelemetry import trace

import riskmesh
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.study import spec as specs
from services.gateway.audit import AuditLog
from services.gateway.errors import RequestError, mapped_errors
from services.gateway.pipeline import OwnerKeys, PhaseFailure, RunPipeline
from services.gateway.predict import predict
from services.gateway.runs import RunCoordinator
from services.gateway.store import Store
from services.mesh.authz import current_caller, current_method
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.mesh.peers import Channels
from services.mesh.tls import MeshCredentials

ROLE_TO_PROTO = {"data_owner": common_pb2.ROLE_DATA_OWNER, "helper": common_pb2.ROLE_HELPER}
PEER_DEADLINE_S = 10.0
START_DEADLINE_S = 180.0  # a peer's setup includes Paillier key generation and reading its data
WATCH_POLL_S = 1.0



class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, config: OrgConfig, credentials: MeshCredentials, store: Store, audit: AuditLog) -> None:
        self.config = config
        self.channels = Channels(config, credentials)
        self.store = store
        self.audit = audit
        self.runs = RunCoordinator(config, self.channels, store, audit)

    def _errors(self, context: grpc.aio.ServicerContext):
        """Domain errors → status codes; a refusal decided here (not a party, not an
        owner, ...) is audited as `rpc.refused`, like the authorisation interceptor's."""
        return mapped_errors(context, self._audit_refusal)

    def _audit_refusal(self, code: grpc.StatusCode) -> None:
        caller = current_caller.get()
        self.audit.append(str(caller) if caller else "unidentified", "rpc.refused", details={"method": current_method.get(), "code": code.name})

    def _caller(self) -> Identity:
        caller = current_caller.get()
        assert caller is not None, "the authorisation interceptor sets the caller"
        return caller

    def _peer_stub(self, org: str) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channels.get(org, "gateway"))

    def _other_parties(self, spec: common_pb2.StudySpec) -> list[str]:
        return [p.org for p in spec.parties if p.org != self.config.org]

    def _require_owner(self, spec: common_pb2.StudySpec, what: str) -> None:
        if specs.role_of(spec, self.config.org) != common_pb2.ROLE_DATA_OWNER:
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"{self.config.org} is not a data owner of study {spec.study_id!r}: {what} is for data owners only")

    def _require_party(self, spec: common_pb2.StudySpec, org: str) -> None:
        if specs.role_of(spec, org) == common_pb2.ROLE_UNSPECIFIED:
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"{org} is not a party of study {spec.study_id!r}")

    def _check_parties_match_config(self, spec: common_pb2.StudySpec) -> None:
        for party in spec.parties:
            role = self.config.role_of(party.org)
            if role is None:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"party {party.org!r} is not a configured organisation of this mesh")
            if ROLE_TO_PROTO[role] != party.role:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"party {party.org!r} is a {role} in this mesh, not {common_pb2.Role.Name(party.role)}")

    async def _call_peers(self, orgs: list[str], call, what: str) -> None:
        """Call every peer; any refusal or outage fails the whole request with its reason."""
        results = await asyncio.gather(*(call(self._peer_stub(org)) for org in orgs), return_exceptions=True)
        for org, result in zip(orgs, results):
            if isinstance(result, grpc.aio.AioRpcError):
                code = result.code() if result.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED) else grpc.StatusCode.UNAVAILABLE
                raise RequestError(code, f"{what}: {org} answered {result.code().name}: {result.details()}")
            if isinstance(result, BaseException):
                raise result

    # Info -------------------------------------------------------------------------

    async def GetInfo(self, request, context):
        caller = current_caller.get()
        return gateway_pb2.GetInfoResponse(org=self.config.org, role=ROLE_TO_PROTO[self.config.role], version=riskmesh.__version__,
                                           caller_identity=str(caller) if caller else "", server_time_unix_ms=time.time_ns() // 1_000_000)

    async def CheckPeers(self, request, context):
        statuses = await asyncio.gather(*(self._check_peer(org) for org in self.config.peers))
        return gateway_pb2.CheckPeersResponse(org=self.config.org, peers=statuses)

    async def _check_peer(self, org: str) -> gateway_pb2.PeerStatus:
        address = self.config.endpoint(org).address("gateway")
        started = time.perf_counter()
        try:
            info = await self._peer_stub(org).GetInfo(gateway_pb2.GetInfoRequest(), timeout=PEER_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=f"{exc.code().name}: {exc.details()}")
        latency = (time.perf_counter() - started) * 1000
        if info.org != org:
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=f"answered as {info.org!r}")
        return gateway_pb2.PeerStatus(org=org, address=address, reachable=True, role=info.role, latency_ms=latency)

    # Studies ------------------------------------------------------------------------

    async def ProposeStudy(self, request, context):
        async with self._errors(context):
            spec = specs.normalise(request.spec)
            specs.validate(spec)
            self._check_parties_match_config(spec)
            self._require_owner(spec, "proposing a study")
            digest = specs.spec_digest(spec)
            # Peers first: a proposal that a peer refuses is not stored anywhere as current.
            await self._call_peers(self._other_parties(spec), lambda stub: stub.PeerPropose(gateway_pb2.PeerProposeRequest(spec=spec, spec_digest=digest), timeout=PEER_DEADLINE_S), "proposal refused")
            self.store.put_study(spec, digest, proposed_by=self.config.org, source_path=request.source_path or None)
            # Proposing is the proposer's approval of exactly this digest (the peers record it too).
            study = self.store.approve(spec.study_id, self.config.org, digest)
            self.audit.append(str(self._caller()), "study.proposed", study_id=spec.study_id, details={"spec_digest": digest})
            return gateway_pb2.ProposeStudyResponse(study=study.to_proto())

    async def PeerPropose(self, request, context):
        async with self._errors(context):
            caller = self._caller()
            spec = specs.normalise(request.spec)
            specs.validate(spec)
            self._check_parties_match_config(spec)
            digest = specs.spec_digest(spec)
            if digest != request.spec_digest:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the spec digest does not match the spec (different riskmesh versions?)")
            self._require_party(spec, self.config.org)
            if specs.role_of(spec, caller.org) != common_pb2.ROLE_DATA_OWNER:
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"{caller.org} is not a data owner of the proposed study")
            self.store.put_study(spec, digest, proposed_by=caller.org)
            self.store.approve(spec.study_id, caller.org, digest)
            self.audit.append(str(caller), "study.proposed", study_id=spec.study_id, details={"spec_digest": digest, "org": caller.org})
            return gateway_pb2.PeerProposeResponse()

    async def ApproveStudy(self, request, context):
        async with self._errors(context):
            study = self.store.get_study(request.study_id)
            if request.spec_digest != study.digest:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"study {study.study_id!r} changed: review it and approve digest {study.digest}")
            if specs.role_of(study.spec, self.config.org) == common_pb2.ROLE_DATA_OWNER:
                if not (request.source_path or study.source_path):
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "source_path is required: the path of this organisation's CSV file (it stays here)")
                if request.source_path:
                    self.store.set_source_path(study.study_id, request.source_path)
            await self._call_peers(self._other_parties(study.spec), lambda stub: stub.PeerApprove(gateway_pb2.PeerApproveRequest(study_id=study.study_id, spec_digest=study.digest), timeout=PEER_DEADLINE_S), "approval not accepted")
            study = self.store.approve(study.study_id, self.config.org, study.digest)
            self.audit.append(str(self._caller()), "study.approved", study_id=study.study_id, details={"spec_digest": study.digest})
            return gateway_pb2.ApproveStudyResponse(study=study.to_proto())

    async def PeerApprove(self, request, context):
        async with self._errors(context):
            caller = self._caller()
            study = self.store.get_study(request.study_id)
            self._require_party(study.spec, caller.org)
            self.store.approve(study.study_id, caller.org, request.spec_digest)
            self.audit.append(str(caller), "study.approved", study_id=study.study_id, details={"spec_digest": request.spec_digest, "org": caller.org})
            return gateway_pb2.PeerApproveResponse()

    async def GetStudy(self, request, context):
        async with self._errors(context):
            return gateway_pb2.GetStudyResponse(study=self.store.get_study(request.study_id).to_proto())

    async def ListStudies(self, request, context):
        return gateway_pb2.ListStudiesResponse(studies=[s.to_proto() for s in self.store.list_studies()])

    # Runs ----------------------------------------------------------------------------

    async def StartRun(self, request, context):
        async with self._errors(context):
            study = self.store.get_study(request.study_id)
            self._require_owner(study.spec, "starting a run")
            if not study.source_path:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "this organisation has no source_path for the study: approve it with --source")
            run_id = f"{study.study_id}-{uuid.uuid4().hex[:12]}"
            trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
            run = self.store.create_run(run_id, study.study_id, study.digest, started_by=self.config.org, trace_id=trace_id)
            self.audit.append(str(self._caller()), "run.started", study_id=study.study_id, run_id=run_id, details={"spec_digest": study.digest, "trace_id": trace_id})
            parties = [p.org for p in study.spec.parties]
            pipeline = RunPipeline(self.config, self.channels, study.spec, run_id, self.runs.report)
            self.runs.launch(run_id, parties, pipeline, lambda: self._drive_as_starter(pipeline, study, run_id))
            return gateway_pb2.StartRunResponse(run=self.store.get_run(run.run_id).to_proto())

    async def _drive_as_starter(self, pipeline: RunPipeline, study, run_id: str):
        spec = study.spec
        mine = await pipeline.prepare_owner(study.source_path)
        helper = specs.helper_org(spec)
        other = next(o for o in specs.owner_orgs(spec) if o != self.config.org)
        # The helper opens the intersection before any owner uploads.
        await self._start_peer(helper, gateway_pb2.PeerStartRunRequest(run_id=run_id, study_id=spec.study_id, spec_digest=study.digest))
        reply = await self._start_peer(other, gateway_pb2.PeerStartRunRequest(
            run_id=run_id, study_id=spec.study_id, spec_digest=study.digest, x25519_public_key=mine.x25519_public_key, paillier_key=mine.paillier_key))
        return await pipeline.run_owner(OwnerKeys(reply.x25519_public_key, reply.paillier_key))

    async def _start_peer(self, org: str, request: gateway_pb2.PeerStartRunRequest) -> gateway_pb2.PeerStartRunResponse:
        # A peer gateway that was down (e.g. restarted) is still behind the channel's
        # reconnect backoff for a moment after it is back: wait, boundedly, until the
        # channel connects rather than fail the run at once with a stale "connection refused".
        try:
            await asyncio.wait_for(self.channels.get(org, "gateway").channel_ready(), PEER_DEADLINE_S)
        except asyncio.TimeoutError:
            raise PhaseFailure(common_pb2.PHASE_SETUP, org, f"could not start the run there: its gateway did not answer within {PEER_DEADLINE_S:.0f} s") from None
        try:
            return await self._peer_stub(org).PeerStartRun(request, timeout=START_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            raise PhaseFailure(common_pb2.PHASE_SETUP, org, f"could not start the run there: {exc.code().name}: {exc.details()}") from None

    async def PeerStartRun(self, request, context):
        async with self._errors(context):
            caller = self._caller()
            study = self.store.get_study(request.study_id)
            self._require_party(study.spec, caller.org)
            if specs.role_of(study.spec, caller.org) != common_pb2.ROLE_DATA_OWNER:
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "only a data owner starts a run")
            role = specs.role_of(study.spec, self.config.org)
            if role == common_pb2.ROLE_DATA_OWNER and not study.source_path:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{self.config.org} has no source_path for the study")
            self.store.create_run(request.run_id, study.study_id, request.spec_digest, started_by=caller.org)
            self.audit.append(str(caller), "run.started", study_id=study.study_id, run_id=request.run_id, details={"spec_digest": request.spec_digest, "org": caller.org})
            parties = [p.org for p in study.spec.parties]
            self.runs.remember_parties(request.run_id, parties)
            pipeline = RunPipeline(self.config, self.channels, study.spec, request.run_id, self.runs.report)
            try:
                if role == common_pb2.ROLE_HELPER:
                    await pipeline.open_helper()
                    self.runs.launch(request.run_id, parties, pipeline, pipeline.run_helper)
                    return gateway_pb2.PeerStartRunResponse()
                mine = await pipeline.prepare_owner(study.source_path)
            except PhaseFailure as failure:
                await self.runs.fail(request.run_id, failure.to_proto(), tell_peers=True)
                await pipeline.drop()
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, failure.reason) from None
            peer = OwnerKeys(request.x25519_public_key, request.paillier_key)
            self.runs.launch(request.run_id, parties, pipeline, lambda: pipeline.run_owner(peer))
            return gateway_pb2.PeerStartRunResponse(x25519_public_key=mine.x25519_public_key, paillier_key=mine.paillier_key)

    async def PeerProgress(self, request, context):
        async with self._errors(context):
            caller = self._caller()
            phases, states = common_pb2.Phase.values(), common_pb2.RunState.values()
            if request.progress.phase not in phases or request.progress.state not in states or (request.HasField("error") and request.error.phase not in phases):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the progress names an unknown phase or run state")
            run = self.store.get_run(request.progress.run_id)
            self._require_party(self.store.get_spec(run.digest), caller.org)
            if request.progress.org != caller.org:
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED, f"{caller.org} may only report its own progress")
            self.runs.record(request.progress)
            if request.HasField("error"):
                await self.runs.fail(run.run_id, request.error, tell_peers=False)
            return gateway_pb2.PeerProgressResponse()

    async def WatchRun(self, request, context) -> AsyncIterator[gateway_pb2.WatchRunResponse]:
        async with self._errors(context):
            self.store.get_run(request.run_id)
        seen = 0
        while True:
            changed = self.runs.changed(request.run_id)
            run = self.store.get_run(request.run_id)
            for event in self.store.events(request.run_id, after_seq=seen):
                seen = event.seq
                yield gateway_pb2.WatchRunResponse(progress=event.progress, run=run.to_proto())
            if run.terminal:
                yield gateway_pb2.WatchRunResponse(run=run.to_proto())
                return
            try:
                await asyncio.wait_for(changed.wait(), WATCH_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def GetResult(self, request, context):
        async with self._errors(context):
            run = self.store.get_run(request.run_id)
            spec = self.store.get_spec(run.digest)
            self._require_owner(spec, "reading a result")
            if run.state != common_pb2.RUN_STATE_SUCCEEDED:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} is {common_pb2.RunState.Name(run.state)}, not SUCCEEDED")
            result = self.store.get_result(run.run_id)
            if result is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"run {run.run_id} has no stored result")
            self.audit.append(str(self._caller()), "result.read", study_id=run.study_id, run_id=run.run_id, details={"joined": run.joined})
            return gateway_pb2.GetResultResponse(run=run.to_proto(), result=result)

    async def CancelRun(self, request, context):
        async with self._errors(context):
            run = self.store.get_run(request.run_id)
            self._require_owner(self.store.get_spec(run.digest), "cancelling a run")
            if run.terminal:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} already ended ({common_pb2.RunState.Name(run.state)})")
            reason = f"cancelled by {self.config.org}"
            self.runs.cancel(run.run_id, reason)
            self.audit.append(str(self._caller()), "run.cancel_requested", study_id=run.study_id, run_id=run.run_id)
            spec = self.store.get_spec(run.digest)
            await asyncio.gather(*(self._peer_stub(o).PeerCancelRun(gateway_pb2.PeerCancelRunRequest(run_id=run.run_id, reason=reason), timeout=PEER_DEADLINE_S) for o in self._other_parties(spec)), return_exceptions=True)
            return gateway_pb2.CancelRunResponse(run=self.store.get_run(run.run_id).to_proto())

    async def PeerCancelRun(self, request, context):
        async with self._errors(context):
            caller = self._caller()
            run = self.store.get_run(request.run_id)
            spec = self.store.get_spec(run.digest)
            if specs.role_of(spec, caller.org) != common_pb2.ROLE_DATA_OWNER:
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "only a data owner cancels a run")
            self.runs.cancel(run.run_id, f"cancelled by {caller.org}")
            return gateway_pb2.PeerCancelRunResponse()

    async def ListRuns(self, request, context):
        return gateway_pb2.ListRunsResponse(runs=[r.to_proto() for r in self.store.list_runs(request.study_id or None)])

    async def Predict(self, request, context):
        async with self._errors(context):
            run = self.store.get_run(request.run_id)
            self._require_owner(self.store.get_spec(run.digest), "predicting with a revealed model")
            result = self.store.get_result(run.run_id)
            if result is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} has no revealed model")
            predictions = predict(result, [dict(r.values) for r in request.records])
            return gateway_pb2.PredictResponse(predictions=predictions)

    async def VerifyAudit(self, request, context):
        result = self.audit.verify()
        return gateway_pb2.VerifyAuditResponse(ok=result.ok, rows=result.rows, first_bad_row=result.first_bad_row or 0, problem=result.problem or "")
