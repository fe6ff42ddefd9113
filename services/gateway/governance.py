"""Which runs of an approved study may go ahead here, and what each owner's input was.

Every party holds three guards in its own database, so no owner can pull the other's data
out through many legitimate runs:

- **Disclosure floors**: the spec against this organisation's local policy
  (services/study/policy.py), when it proposes or approves and again before every run.
- **The run policy** the owners approved with the spec: at most `max_runs` counted runs,
  `min_interval_seconds` apart (enforced by `Store.create_run`, in one transaction).
- **Input commitments and run approvals**: at every run each owner's encryption server
  commits to the rows it read (HMAC-SHA256 under the owner's own per-study secret,
  services/join/core/commitment.py). The commitment goes to the other two parties and into
  every party's audit log. A run in which an owner's input differs from that owner's
  previous run of the study — and, with RUN_APPROVAL_EVERY_RUN, every run of the starting
  owner — needs the other owner's approval first (`ApproveRun`; a changed input is approved
  by its commitment). The owner whose run waits asks for it (`PeerRequestRunApproval`), so
  the other owner is told "the insurer's input changed since run N". Approvals are shared
  with all three parties; each uses one per counted run.

The starting owner checks its own input before it contacts anyone, the helper and the
other owner check it again when they admit the run, the other owner checks its own input
after its setup and the starting owner checks that one again on the reply. A run refused
this way ends in setup, before anything was matched, so it does not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from riskmesh.v1 import common_pb2, gateway_pb2
from services.gateway import access
from services.gateway.audit import AuditEntry, AuditLog
from services.gateway.codec import input_to_proto
from services.gateway.errors import RequestError, RunPolicyError
from services.gateway.peer_gateways import PEER_DEADLINE_S, PeerGateways
from services.gateway.store import InputRecord, PendingApproval, Store, StudyRecord
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.study import policy as policies
from services.study import spec as specs

# The other parties admit a run that far before the interval is over: the starting owner's
# setup (key generation, reading its data) and clocks differ between organisations.
INTERVAL_SLACK_S = 120.0


@dataclass(frozen=True)
class InputCheck:
    """An owner's input for a run, compared with its previous run here, and whether it may go ahead."""

    record: InputRecord
    approver: str  # the other owner
    needs_approval: bool
    grant_id: int | None

    @property
    def admitted(self) -> bool:
        return not self.needs_approval or self.grant_id is not None

    def refusal(self, study_id: str) -> str:
        """Why the run waits (safe to tell every party: names, run ids and a commitment only)."""
        org, approver = self.record.org, self.approver
        if self.record.changed:
            why = f"{org}'s input changed since run {self.record.previous_run_id}"
        else:
            why = f"every run of this study needs {approver}'s approval"
        return f"{approver} has not approved this run: {why} (riskmesh study approve-run {study_id} --org {approver})"


class Governance:
    def __init__(self, config: OrgConfig, store: Store, audit: AuditLog, peers: PeerGateways) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.peers = peers
        self.policy = policies.local_policy(config)
        self.actor = f"spiffe://{config.org}/gateway"

    # Disclosure floors ------------------------------------------------------------

    def require_floors(self, spec: common_pb2.StudySpec, caller: Identity, what: str, run_id: str = "") -> None:
        """Refuse (FAILED_PRECONDITION, audited) a spec that breaks this organisation's floors."""
        refused = self.policy.refusals(spec)
        if not refused:
            return
        reason = f"{self.config.org}'s disclosure policy refuses {what}: {policies.explain(refused)}"
        self.refuse(caller, "policy.refused", spec.study_id, run_id, reason)

    def joined_floor(self, spec: common_pb2.StudySpec) -> int:
        return self.policy.joined_floor(len(specs.feature_names(spec)))

    def refuse(self, caller: Identity | str, action: str, study_id: str, run_id: str, reason: str) -> None:
        """Audit a refusal, then raise it as FAILED_PRECONDITION."""
        details = {"reason": reason[:200]}
        self.audit.append(str(caller), action, study_id=study_id, run_id=run_id, details=details)
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, reason)

    # The run policy ------------------------------------------------------------------

    def require_quota(self, study: StudyRecord, caller: Identity | str, run_id: str = "", slack_s: float = 0.0) -> None:
        """Refuse (FAILED_PRECONDITION, audited) a run over the quota or too soon after the last."""
        try:
            self.store.check_quota(study.study_id, slack_s)
        except RunPolicyError as exc:
            self.refuse(caller, "run.refused", study.study_id, run_id, str(exc))

    # Inputs ---------------------------------------------------------------------------

    def check_input(self, study: StudyRecord, run_id: str, org: str, commitment: str, starter: bool) -> InputCheck:
        """`org`'s input for the run against its previous counted run here and the approvals given."""
        previous = self.store.previous_input(study.study_id, org, before_run=run_id)
        changed = previous is not None and previous.commitment != commitment
        every_run = starter and study.spec.run_policy.run_approval == common_pb2.RUN_APPROVAL_EVERY_RUN
        needs = changed or every_run
        grant = self.store.available_grant(study.study_id, study.digest, org, commitment, changed) if needs else None
        record = InputRecord(org, commitment, previous.previous_run_id if previous else "", changed)
        return InputCheck(record, other_owner(study.spec, org), needs, grant)

    def input_entry(self, study_id: str, run_id: str, record: InputRecord) -> AuditEntry:
        details = {
            "org": record.org,
            "commitment": record.commitment,
            "previous_run": record.previous_run_id,
            "changed": record.changed,
        }
        return self.audit.entry(self.actor, "run.input_committed", study_id=study_id, run_id=run_id, details=details)

    def record_input(self, study_id: str, run_id: str, check: InputCheck) -> None:
        """Store an admitted input (using its approval) with its audit row."""
        entry = self.input_entry(study_id, run_id, check.record)
        self.store.record_input(run_id, check.record, check.grant_id, entry)

    def note_waiting(self, study: StudyRecord, check: InputCheck) -> None:
        """Here, as the approver: a run of the other owner waits for this organisation's approval."""
        record = check.record
        pending = PendingApproval(
            study.study_id, study.digest, record.org, check.approver, record.commitment,
            record.previous_run_id, record.changed, 0.0,
        )  # fmt: skip
        details = {"org": record.org, "commitment": record.commitment, "previous_run": record.previous_run_id,
                   "changed": record.changed, "approver": check.approver}  # fmt: skip
        entry = self.audit.entry(self.actor, "run.approval_requested", study_id=study.study_id, details=details)
        self.store.add_pending(pending, entry)

    async def ask_approval(self, study: StudyRecord, check: InputCheck) -> None:
        """Tell the approver that a run of this organisation waits for it (and record that here)."""
        record = check.record
        details = {"org": record.org, "commitment": record.commitment, "previous_run": record.previous_run_id,
                   "changed": record.changed, "approver": check.approver}  # fmt: skip
        self.audit.append(self.actor, "run.approval_requested", study_id=study.study_id, details=details)
        request = gateway_pb2.PeerRequestRunApprovalRequest(
            study_id=study.study_id, spec_digest=study.digest, input=input_to_proto(record)
        )
        await self.peers.call_all(
            [check.approver],
            lambda stub: stub.PeerRequestRunApproval(request, timeout=PEER_DEADLINE_S),
            "the approval request did not reach the other owner",
        )

    # Run approvals ----------------------------------------------------------------------

    async def approve_run(self, study_id: str, org: str, commitment: str, caller: Identity) -> StudyRecord:
        """This organisation (an owner) approves the other owner's next run, or its changed input."""
        study = self.store.get_study(study_id)
        access.require_owner(study.spec, self.config.org, "approving a run")
        if study.state != common_pb2.STUDY_STATE_APPROVED:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"study {study_id!r} is not approved")
        other = other_owner(study.spec, self.config.org)
        org = org or other
        if org != other:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{self.config.org} approves runs of {other} only")
        if not commitment:
            waiting = [p for p in self.store.pending(study_id) if p.org == org]
            commitment = waiting[-1].commitment if waiting else ""
        request = gateway_pb2.PeerApproveRunRequest(
            study_id=study_id, spec_digest=study.digest, org=org, commitment=commitment
        )
        await self.peers.call_all(
            self.peers.others(study.spec),
            lambda stub: stub.PeerApproveRun(request, timeout=PEER_DEADLINE_S),
            "run approval not accepted",
        )
        details = {"org": org, "commitment": commitment, "spec_digest": study.digest}
        entry = self.audit.entry(str(caller), "run.approved", study_id=study_id, details=details)
        self.store.add_grant(study_id, study.digest, org, self.config.org, commitment, entry)
        return self.store.get_study(study_id)

    def accept_run_approval(self, request: gateway_pb2.PeerApproveRunRequest, caller: Identity) -> None:
        """A peer owner approved a run of the other owner: every party keeps the approval."""
        study = self.store.get_study(request.study_id)
        if not access.is_owner(study.spec, caller.org):
            raise access.denied("only a data owner approves runs")
        if request.org == caller.org or not access.is_owner(study.spec, request.org):
            raise access.denied(f"{caller.org} approves runs of the other data owner only")
        details = {"org": request.org, "commitment": request.commitment, "spec_digest": request.spec_digest,
                   "approver": caller.org}  # fmt: skip
        entry = self.audit.entry(str(caller), "run.approved", study_id=study.study_id, details=details)
        self.store.add_grant(study.study_id, request.spec_digest, request.org, caller.org, request.commitment, entry)

    def accept_approval_request(self, request: gateway_pb2.PeerRequestRunApprovalRequest, caller: Identity) -> None:
        """The other owner's run waits for this organisation's approval: record it to be shown."""
        study = self.store.get_study(request.study_id)
        access.require_owner(study.spec, self.config.org, "approving runs")
        if not access.is_owner(study.spec, caller.org) or request.input.org != caller.org:
            raise access.denied(f"{caller.org} may only ask for approval of its own runs")
        if request.spec_digest != study.digest:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, "the run names a digest that is not the current spec's"
            )
        if not is_commitment(request.input.commitment):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "an input commitment is 64 hex digits")
        # This organisation's own view of the change, not the caller's.
        check = self.check_input(study, "", caller.org, request.input.commitment, starter=True)
        self.note_waiting(study, check)

    # What the approval screen shows ----------------------------------------------------

    def status(self, study: StudyRecord) -> gateway_pb2.RunGovernance:
        quota = self.store.quota(study.study_id)
        status = gateway_pb2.RunGovernance(runs_counted=quota.counted, max_runs=quota.max_runs)
        if quota.next_start:
            status.next_run_not_before.CopyFrom(_timestamp(quota.next_start))
        for grant in self.store.grants(study.study_id):
            status.grants.add(org=grant.org, approved_by=grant.approved_by, commitment=grant.commitment,
                              at=_timestamp(grant.at))  # fmt: skip
        for waiting in self.store.pending(study.study_id):
            status.pending.add(org=waiting.org, approver=waiting.approver, commitment=waiting.commitment,
                               previous_run_id=waiting.previous_run_id, changed=waiting.changed,
                               at=_timestamp(waiting.at))  # fmt: skip
        return status

    def policy_checks(self, spec: common_pb2.StudySpec) -> list[gateway_pb2.PolicyCheck]:
        return [gateway_pb2.PolicyCheck(name=c.name, required=c.required, actual=c.actual, ok=c.ok)
                for c in self.policy.checks(spec)]  # fmt: skip


def other_owner(spec: common_pb2.StudySpec, org: str) -> str:
    first, second = specs.owner_orgs(spec)
    return second if org == first else first


def is_commitment(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
