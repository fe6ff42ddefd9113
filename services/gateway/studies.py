"""Agreeing on a study across the parties: propose, approve, and accepting a peer's.

A proposal or approval goes to every other party first and is stored here only when all
of them accepted it, so no party records a study state the others refused. Proposing is
the proposer's approval of exactly that digest (the peers record it too); the study is
APPROVED once the two owners approved and the helper acknowledged the same digest.

Specs arrive normalised and validated (the servicer checks a request's spec before it
calls in here); the store checks the digest again and enforces the approval rules. This
organisation proposes and approves only specs within its own disclosure floors (its local
policy, `governance`); a peer's proposal beyond them is stored, to be reviewed and changed.
"""

from __future__ import annotations

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2
from services.gateway import access
from services.gateway.audit import AuditLog
from services.gateway.errors import RequestError
from services.gateway.governance import Governance
from services.gateway.offline import OfflineMaterial
from services.gateway.peer_gateways import PEER_DEADLINE_S, PeerGateways
from services.gateway.store import Store, StudyRecord
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.study import spec as specs


class StudyLifecycle:
    def __init__(
        self,
        config: OrgConfig,
        store: Store,
        audit: AuditLog,
        peers: PeerGateways,
        governance: Governance,
        offline: OfflineMaterial,
    ) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.peers = peers
        self.governance = governance
        self.offline = offline  # an approved study's first run's keys and pools, made now

    async def propose(self, spec: common_pb2.StudySpec, source_path: str | None, caller: Identity) -> StudyRecord:
        """This organisation (a data owner) proposes `spec`, naming its local data file."""
        org = self.config.org
        access.require_owner(spec, org, "proposing a study")
        self.governance.require_floors(spec, caller, "proposing this spec")
        digest = specs.spec_digest(spec)
        request = gateway_pb2.PeerProposeRequest(spec=spec, spec_digest=digest)
        await self.peers.call_all(
            self.peers.others(spec), lambda stub: stub.PeerPropose(request, timeout=PEER_DEADLINE_S), "proposal refused"
        )
        self.store.put_study(spec, digest, proposed_by=org, source_path=source_path)
        study = self.store.approve(spec.study_id, org, digest)
        self.audit.append(str(caller), "study.proposed", study_id=spec.study_id, details={"spec_digest": digest})
        return study

    def accept_proposal(self, spec: common_pb2.StudySpec, caller: Identity) -> None:
        """A peer data owner proposed `spec` (its digest already checked): store it with its approval."""
        access.require_party(spec, self.config.org)
        if not access.is_owner(spec, caller.org):
            raise access.denied(f"{caller.org} is not a data owner of the proposed study")
        digest = specs.spec_digest(spec)
        self.store.put_study(spec, digest, proposed_by=caller.org)
        self.store.approve(spec.study_id, caller.org, digest)
        details = {"spec_digest": digest, "org": caller.org}
        self.audit.append(str(caller), "study.proposed", study_id=spec.study_id, details=details)

    async def approve(self, study_id: str, digest: str, source_path: str, caller: Identity) -> StudyRecord:
        """This organisation approves (owner) or acknowledges (helper) the study's current digest."""
        study = self.store.get_study(study_id)
        if digest != study.digest:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"study {study.study_id!r} changed: review it and approve digest {study.digest}",
            )
        self.governance.require_floors(study.spec, caller, "approving this spec")
        if access.is_owner(study.spec, self.config.org):
            self._keep_source_path(study, source_path)
        request = gateway_pb2.PeerApproveRequest(study_id=study.study_id, spec_digest=study.digest)
        await self.peers.call_all(
            self.peers.others(study.spec),
            lambda stub: stub.PeerApprove(request, timeout=PEER_DEADLINE_S),
            "approval not accepted",
        )
        study = self.store.approve(study.study_id, self.config.org, study.digest)
        details = {"spec_digest": study.digest}
        self.audit.append(str(caller), "study.approved", study_id=study.study_id, details=details)
        self.offline.prepare_soon(study.study_id)
        return study

    def _keep_source_path(self, study: StudyRecord, source_path: str) -> None:
        """An owner approves with the path of its local data (given now or when it proposed)."""
        if not (source_path or study.source_path):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "source_path is required: the path of this organisation's CSV file (it stays here)",
            )
        if source_path:
            self.store.set_source_path(study.study_id, source_path)

    def accept_approval(self, study_id: str, digest: str, caller: Identity) -> None:
        """A peer party approved `digest` of the study."""
        study = self.store.get_study(study_id)
        access.require_party(study.spec, caller.org)
        self.store.approve(study.study_id, caller.org, digest)
        details = {"spec_digest": digest, "org": caller.org}
        self.audit.append(str(caller), "study.approved", study_id=study.study_id, details=details)
        self.offline.prepare_soon(study.study_id)
