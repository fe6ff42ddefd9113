"""GatewayService: a thin adapter between gRPC and the gateway's modules.

Each method checks the request's own shape, calls the store or one of the modules that
do the work (studies: propose/approve; orchestration: start, follow and cancel runs;
results: read a model, predict), and turns records into messages with `codec`. Domain
errors become status codes in `errors.mapped_errors`.

Who may call what is decided twice: the authorisation table (services/gateway/rules.py)
admits only the org's own clients or peer gateways per method; then each call is checked
against the study (`access`: the caller must be a party, an owner where it matters), and
results go to data owners only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

import riskmesh
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway import access, codec
from services.gateway.audit import AuditLog
from services.gateway.errors import RequestError, mapped_errors
from services.gateway.governance import Governance, is_commitment
from services.gateway.offline import OfflineMaterial
from services.gateway.orchestration import RunOrchestrator
from services.gateway.peer_gateways import PeerGateways
from services.gateway.results import Results
from services.gateway.runs import RunCoordinator
from services.gateway.store import Store, StudyRecord
from services.gateway.studies import StudyLifecycle
from services.mesh.authz import current_caller, current_method
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.mesh.peers import Channels
from services.mesh.tls import MeshCredentials
from services.study import policy as policies
from services.study import spec as specs

Context: TypeAlias = grpc.aio.ServicerContext
AUDIT_PAGE_DEFAULT = 200
AUDIT_PAGE_MAX = 1000


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, config: OrgConfig, credentials: MeshCredentials, store: Store, audit: AuditLog) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        channels = Channels(config, credentials)
        self.peers = PeerGateways(config, channels)
        self.runs = RunCoordinator(config, channels, store, audit)
        self.governance = Governance(config, store, audit, self.peers)
        self.offline = OfflineMaterial(config, channels, store, self.peers)
        self.studies = StudyLifecycle(config, store, audit, self.peers, self.governance, self.offline)
        self.orchestrator = RunOrchestrator(
            config, channels, store, audit, self.peers, self.runs, self.governance, self.offline
        )
        self.results = Results(config.org, store, audit)

    def _errors(self, context: Context) -> contextlib.AbstractAsyncContextManager[None]:
        """Domain errors → status codes; a refusal decided here (not a party, not an
        owner, ...) is audited as `rpc.refused`, like the authorisation interceptor's."""
        return mapped_errors(context, self._audit_refusal)

    def _audit_refusal(self, code: grpc.StatusCode) -> None:
        caller = current_caller.get()
        details = {"method": current_method.get(), "code": code.name}
        self.audit.append(str(caller) if caller else "unidentified", "rpc.refused", details=details)

    def _caller(self) -> Identity:
        caller = current_caller.get()
        assert caller is not None, "the authorisation interceptor sets the caller"
        return caller

    def _study(self, study: StudyRecord) -> gateway_pb2.Study:
        """A study as this organisation sees it: its runs against the run policy, its own
        disclosure floors against the spec, and what each party will learn."""
        return codec.study_to_proto(
            study,
            self.governance.status(study),
            self.governance.policy_checks(study.spec),
            policies.disclosures(study.spec),
        )

    def _checked_spec(self, spec: common_pb2.StudySpec) -> common_pb2.StudySpec:
        """A proposed spec, normalised, valid, and naming this mesh's organisations in their roles."""
        spec = specs.normalise(spec)
        specs.validate(spec)
        access.require_configured_parties(spec, self.config)
        return spec

    # Info -------------------------------------------------------------------------

    async def GetInfo(self, request: gateway_pb2.GetInfoRequest, context: Context) -> gateway_pb2.GetInfoResponse:
        caller = current_caller.get()
        return gateway_pb2.GetInfoResponse(
            org=self.config.org,
            role=codec.role_to_proto(self.config.role),
            version=riskmesh.__version__,
            caller_identity=str(caller) if caller else "",
            server_time_unix_ms=time.time_ns() // 1_000_000,
        )

    async def CheckPeers(
        self, request: gateway_pb2.CheckPeersRequest, context: Context
    ) -> gateway_pb2.CheckPeersResponse:
        return gateway_pb2.CheckPeersResponse(org=self.config.org, peers=await self.peers.check_all())

    # Studies ------------------------------------------------------------------------

    async def ProposeStudy(
        self, request: gateway_pb2.ProposeStudyRequest, context: Context
    ) -> gateway_pb2.ProposeStudyResponse:
        async with self._errors(context):
            spec = self._checked_spec(request.spec)
            study = await self.studies.propose(spec, request.source_path or None, self._caller())
            return gateway_pb2.ProposeStudyResponse(study=self._study(study))

    async def PeerPropose(
        self, request: gateway_pb2.PeerProposeRequest, context: Context
    ) -> gateway_pb2.PeerProposeResponse:
        async with self._errors(context):
            caller = self._caller()
            spec = self._checked_spec(request.spec)
            if specs.spec_digest(spec) != request.spec_digest:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the spec digest does not match the spec (different riskmesh versions?)",
                )
            self.studies.accept_proposal(spec, caller)
            return gateway_pb2.PeerProposeResponse()

    async def ApproveStudy(
        self, request: gateway_pb2.ApproveStudyRequest, context: Context
    ) -> gateway_pb2.ApproveStudyResponse:
        async with self._errors(context):
            study = await self.studies.approve(
                request.study_id, request.spec_digest, request.source_path, self._caller()
            )
            return gateway_pb2.ApproveStudyResponse(study=self._study(study))

    async def PeerApprove(
        self, request: gateway_pb2.PeerApproveRequest, context: Context
    ) -> gateway_pb2.PeerApproveResponse:
        async with self._errors(context):
            self.studies.accept_approval(request.study_id, request.spec_digest, self._caller())
            return gateway_pb2.PeerApproveResponse()

    async def GetStudy(self, request: gateway_pb2.GetStudyRequest, context: Context) -> gateway_pb2.GetStudyResponse:
        async with self._errors(context):
            study = self.store.get_study(request.study_id)
            return gateway_pb2.GetStudyResponse(study=self._study(study), offline=self.offline.status(study.study_id))

    async def ListStudies(
        self, request: gateway_pb2.ListStudiesRequest, context: Context
    ) -> gateway_pb2.ListStudiesResponse:
        return gateway_pb2.ListStudiesResponse(studies=[self._study(s) for s in self.store.list_studies()])

    # Runs ----------------------------------------------------------------------------

    async def StartRun(self, request: gateway_pb2.StartRunRequest, context: Context) -> gateway_pb2.StartRunResponse:
        async with self._errors(context):
            run = await self.orchestrator.start(request.study_id, self._caller())
            return gateway_pb2.StartRunResponse(run=codec.run_to_proto(run))

    async def PeerStartRun(
        self, request: gateway_pb2.PeerStartRunRequest, context: Context
    ) -> gateway_pb2.PeerStartRunResponse:
        async with self._errors(context):
            mine = await self.orchestrator.join(request, self._caller())
            if mine is None:  # the helper has no keys to hand over
                return gateway_pb2.PeerStartRunResponse()
            return gateway_pb2.PeerStartRunResponse(
                x25519_public_key=mine.keys.x25519_public_key,
                paillier_key=mine.keys.paillier_key,
                input=gateway_pb2.InputCommitment(org=self.config.org, commitment=mine.commitment),
                prepared_key_id=mine.prepared_key_id,
            )

    async def PeerAnnounceKey(
        self, request: gateway_pb2.PeerAnnounceKeyRequest, context: Context
    ) -> gateway_pb2.PeerAnnounceKeyResponse:
        async with self._errors(context):
            self.offline.accept_announcement(request, self._caller())
            return gateway_pb2.PeerAnnounceKeyResponse()

    async def PeerProgress(
        self, request: gateway_pb2.PeerProgressRequest, context: Context
    ) -> gateway_pb2.PeerProgressResponse:
        async with self._errors(context):
            phases, states = common_pb2.Phase.values(), common_pb2.RunState.values()
            error = request.error if request.HasField("error") else None
            progress = request.progress
            unknown_error_phase = error is not None and error.phase not in phases
            if progress.phase not in phases or progress.state not in states or unknown_error_phase:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the progress names an unknown phase or run state")
            commitment = request.input if request.HasField("input") else None
            await self.orchestrator.accept_progress(progress, error, commitment, self._caller())
            return gateway_pb2.PeerProgressResponse()

    async def WatchRun(
        self, request: gateway_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchRunResponse]:
        async with self._errors(context):
            self.store.get_run(request.run_id)
        async for progress, run in self.runs.watch(request.run_id):
            if progress is None:
                yield gateway_pb2.WatchRunResponse(run=codec.run_to_proto(run))
            else:
                yield gateway_pb2.WatchRunResponse(progress=progress, run=codec.run_to_proto(run))

    async def GetResult(self, request: gateway_pb2.GetResultRequest, context: Context) -> gateway_pb2.GetResultResponse:
        async with self._errors(context):
            run, result = self.results.read(request.run_id, self._caller())
            return gateway_pb2.GetResultResponse(run=codec.run_to_proto(run), result=result)

    async def CancelRun(self, request: gateway_pb2.CancelRunRequest, context: Context) -> gateway_pb2.CancelRunResponse:
        async with self._errors(context):
            run = await self.orchestrator.cancel(request.run_id, self._caller())
            return gateway_pb2.CancelRunResponse(run=codec.run_to_proto(run))

    async def PeerCancelRun(
        self, request: gateway_pb2.PeerCancelRunRequest, context: Context
    ) -> gateway_pb2.PeerCancelRunResponse:
        async with self._errors(context):
            self.orchestrator.accept_cancel(request.run_id, self._caller())
            return gateway_pb2.PeerCancelRunResponse()

    async def ListRuns(self, request: gateway_pb2.ListRunsRequest, context: Context) -> gateway_pb2.ListRunsResponse:
        runs = self.store.list_runs(request.study_id or None)
        return gateway_pb2.ListRunsResponse(runs=[codec.run_to_proto(r) for r in runs])

    async def Predict(self, request: gateway_pb2.PredictRequest, context: Context) -> gateway_pb2.PredictResponse:
        async with self._errors(context):
            predictions, kind = self.results.predict(request.run_id, [dict(r.values) for r in request.records])
            return gateway_pb2.PredictResponse(predictions=predictions, kind=kind)

    async def ApproveRun(
        self, request: gateway_pb2.ApproveRunRequest, context: Context
    ) -> gateway_pb2.ApproveRunResponse:
        async with self._errors(context):
            if request.commitment and not is_commitment(request.commitment):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "an input commitment is 64 hex digits")
            study = await self.governance.approve_run(request.study_id, request.org, request.commitment, self._caller())
            return gateway_pb2.ApproveRunResponse(study=self._study(study))

    async def PeerApproveRun(
        self, request: gateway_pb2.PeerApproveRunRequest, context: Context
    ) -> gateway_pb2.PeerApproveRunResponse:
        async with self._errors(context):
            if request.commitment and not is_commitment(request.commitment):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "an input commitment is 64 hex digits")
            self.governance.accept_run_approval(request, self._caller())
            return gateway_pb2.PeerApproveRunResponse()

    async def PeerRequestRunApproval(
        self, request: gateway_pb2.PeerRequestRunApprovalRequest, context: Context
    ) -> gateway_pb2.PeerRequestRunApprovalResponse:
        async with self._errors(context):
            self.governance.accept_approval_request(request, self._caller())
            return gateway_pb2.PeerRequestRunApprovalResponse()

    async def VerifyAudit(
        self, request: gateway_pb2.VerifyAuditRequest, context: Context
    ) -> gateway_pb2.VerifyAuditResponse:
        return codec.verify_response(self.audit.verify())

    async def ListAudit(self, request: gateway_pb2.ListAuditRequest, context: Context) -> gateway_pb2.ListAuditResponse:
        limit = min(request.limit or AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX)
        rows = self.audit.rows(after_seq=request.after_seq, limit=limit)
        return gateway_pb2.ListAuditResponse(
            records=[codec.audit_record(r) for r in rows], last_seq=self.audit.head()[0]
        )
