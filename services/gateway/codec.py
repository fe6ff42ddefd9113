"""The wire form (protobuf) of the gateway's records and results.

What an organisation keeps to itself never reaches a message built here: a study's
`source_path` (its local CSV) is left out of `Study`.
"""

from __future__ import annotations

from riskmesh.v1 import common_pb2, gateway_pb2
from services.gateway.audit import AuditRow, VerifyResult
from services.gateway.errors import PhaseFailure
from services.gateway.store import InputRecord, RunRecord, StudyRecord

ROLE_TO_PROTO: dict[str, common_pb2.Role.ValueType] = {
    "data_owner": common_pb2.ROLE_DATA_OWNER,
    "helper": common_pb2.ROLE_HELPER,
}


def role_to_proto(role: str) -> common_pb2.Role.ValueType:
    """A configured role name (`OrgConfig.role_of`) as the wire enum."""
    return ROLE_TO_PROTO[role]


def study_to_proto(
    study: StudyRecord,
    governance: gateway_pb2.RunGovernance | None = None,
    policy_checks: list[gateway_pb2.PolicyCheck] | None = None,
    disclosures: dict[str, list[str]] | None = None,
) -> gateway_pb2.Study:
    """The wire form of a study (without the local source path), with this organisation's
    view of its runs, its floors checked against the spec, and who learns what."""
    message = gateway_pb2.Study(
        spec=study.spec,
        spec_digest=study.digest,
        state=study.state,
        approved_by=list(study.approved_by),
        proposed_by=study.proposed_by,
        policy_checks=policy_checks or [],
        disclosures=[gateway_pb2.Disclosure(org=org, items=items) for org, items in (disclosures or {}).items()],
    )
    if governance is not None:
        message.governance.CopyFrom(governance)
    return message


def input_to_proto(record: InputRecord) -> gateway_pb2.InputCommitment:
    return gateway_pb2.InputCommitment(
        org=record.org, commitment=record.commitment, previous_run_id=record.previous_run_id, changed=record.changed
    )


def run_to_proto(run: RunRecord) -> gateway_pb2.Run:
    """The wire form of a run, with its error when it has one."""
    message = gateway_pb2.Run(
        run_id=run.run_id,
        study_id=run.study_id,
        spec_digest=run.digest,
        state=run.state,
        joined=run.joined,
        trace_id=run.trace_id,
        started_by=run.started_by,
        inputs=[input_to_proto(i) for i in run.inputs],
    )
    if run.error is not None:
        message.error.CopyFrom(run.error)
    return message


def run_error(failure: PhaseFailure) -> common_pb2.RunError:
    """Where and why a run failed, as the parties tell each other and the run records it."""
    return common_pb2.RunError(phase=failure.phase, org=failure.org, reason=failure.reason)


def verify_response(result: VerifyResult) -> gateway_pb2.VerifyAuditResponse:
    return gateway_pb2.VerifyAuditResponse(
        ok=result.ok, rows=result.rows, first_bad_row=result.first_bad_row or 0, problem=result.problem or ""
    )


def audit_record(row: AuditRow) -> gateway_pb2.AuditRecord:
    """One audit row as the console and clients list it (details as strings)."""
    return gateway_pb2.AuditRecord(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        study_id=row.study_id,
        run_id=row.run_id,
        details={k: str(v) for k, v in row.details.items()},
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
