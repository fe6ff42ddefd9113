"""The store's run governance: quota and interval (across restarts), which runs count, input
commitments, run approvals used once, and a run's change written with its audit row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from riskmesh.v1 import common_pb2
from services.gateway.audit import AuditLog, audit_path
from services.gateway.errors import IllegalTransitionError, NotAPartyError, RunPolicyError
from services.gateway.store import FAILED, RUNNING, SUCCEEDED, InputRecord, PendingApproval, Store
from services.gateway.store_schema import store_path
from services.study.spec import normalise, spec_digest
from tests.unit.gateway.specs import make_spec

STUDY = "diabetes-risk-2025"
PARTIES = ("insurer", "hospital", "helper")
INPUT_A, INPUT_B = "a" * 64, "b" * 64


class Clock:
    """A clock the test moves: every call is `step` seconds later."""

    def __init__(self, step: float = 1.0) -> None:
        self.t = 1_700_000_000.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "insurer" / "state"


@pytest.fixture
def store(state: Path, clock: Clock) -> Iterator[Store]:
    with Store(store_path(state), clock=clock) as s:
        yield s


def approve(store: Store, **policy: int) -> str:
    spec = normalise(make_spec())
    spec.run_policy.MergeFrom(common_pb2.RunPolicy(**policy))
    digest = spec_digest(spec)
    store.put_study(spec, digest, "insurer", "/data/insurer.csv")
    for org in PARTIES:
        store.approve(STUDY, org, digest)
    return digest


def run(store: Store, digest: str, run_id: str, phase: int, state: int = FAILED, **admission) -> None:  # noqa: ANN003
    """A run that reached `phase` here and ended in `state`."""
    store.create_run(run_id, STUDY, digest, "insurer", **admission)
    store.update_run(run_id, state=RUNNING, phase=phase)
    error = common_pb2.RunError(phase=phase, org="hospital", reason="x") if state == FAILED else None
    store.update_run(run_id, state=state, error=error)


def test_runs_that_ended_in_setup_do_not_count_towards_the_quota(store: Store):
    digest = approve(store, max_runs=2)
    run(store, digest, "r1", common_pb2.PHASE_SETUP)
    run(store, digest, "r2", common_pb2.PHASE_RESHARING)
    run(store, digest, "r3", common_pb2.PHASE_REVEAL, SUCCEEDED)
    assert store.quota(STUDY).counted == 2
    with pytest.raises(RunPolicyError, match="allows 2 run"):
        store.create_run("r4", STUDY, digest, "insurer")


def test_the_quota_holds_across_a_restart(state: Path, clock: Clock):
    with Store(store_path(state), clock=clock) as first:
        digest = approve(first, max_runs=1)
        run(first, digest, "r1", common_pb2.PHASE_INPUT)
    with Store(store_path(state), clock=clock) as again:
        with pytest.raises(RunPolicyError):
            again.create_run("r2", STUDY, digest, "insurer")


def test_the_interval_is_measured_from_the_last_counted_start_with_the_callers_slack(store: Store, clock: Clock):
    digest = approve(store, min_interval_seconds=600)
    run(store, digest, "r1", common_pb2.PHASE_INPUT)
    with pytest.raises(RunPolicyError, match="s more before the next run"):
        store.create_run("r2", STUDY, digest, "insurer")
    clock.t += 500
    with pytest.raises(RunPolicyError):
        store.create_run("r2", STUDY, digest, "insurer")
    store.create_run("r2", STUDY, digest, "insurer", interval_slack_s=120)  # another party's admission
    assert store.quota(STUDY).next_start > clock.t


def test_a_run_approval_is_used_by_one_counted_run_and_freed_by_a_run_that_ended_in_setup(store: Store):
    digest = approve(store)
    grant = store.add_grant(STUDY, digest, "insurer", "hospital", INPUT_B)
    assert store.available_grant(STUDY, digest, "insurer", INPUT_B, changed=True) == grant.id
    assert store.available_grant(STUDY, digest, "insurer", INPUT_A, changed=True) is None
    run(store, digest, "r1", common_pb2.PHASE_SETUP, grant_id=grant.id)  # refused later, in setup
    assert store.available_grant(STUDY, digest, "insurer", INPUT_B, changed=True) == grant.id
    run(store, digest, "r2", common_pb2.PHASE_RESHARING, grant_id=grant.id)
    assert store.available_grant(STUDY, digest, "insurer", INPUT_B, changed=True) is None
    assert store.grants(STUDY) == []
    # An approval of any unchanged input serves an unchanged input only.
    store.add_grant(STUDY, digest, "insurer", "hospital", "")
    assert store.available_grant(STUDY, digest, "insurer", INPUT_A, changed=False) is not None
    assert store.available_grant(STUDY, digest, "insurer", INPUT_A, changed=True) is None
    with pytest.raises(NotAPartyError):
        store.add_grant(STUDY, digest, "insurer", "insurer", "")


def test_the_previous_input_is_the_last_counted_runs(store: Store):
    digest = approve(store)
    run(store, digest, "r1", common_pb2.PHASE_INPUT, inputs=[InputRecord("insurer", INPUT_A)])
    run(store, digest, "r2", common_pb2.PHASE_SETUP, inputs=[InputRecord("insurer", INPUT_B, "r1", True)])
    previous = store.previous_input(STUDY, "insurer")
    assert previous is not None and (previous.commitment, previous.previous_run_id) == (INPUT_A, "r1")
    assert store.get_run("r2").inputs == (InputRecord("insurer", INPUT_B, "r1", True),)
    assert store.previous_input(STUDY, "hospital") is None


def test_an_approval_answers_the_pending_request_for_that_input(store: Store):
    digest = approve(store)
    store.add_pending(PendingApproval(STUDY, digest, "insurer", "hospital", INPUT_B, "r1", True, 0.0))
    store.add_pending(PendingApproval(STUDY, digest, "insurer", "hospital", INPUT_A, "r1", True, 0.0))
    store.add_grant(STUDY, digest, "insurer", "hospital", INPUT_B)
    assert [p.commitment for p in store.pending(STUDY)] == [INPUT_A]


def test_a_run_change_and_its_audit_row_commit_together(store: Store, state: Path):
    digest = approve(store)
    started = store.audit.entry("spiffe://insurer/client", "run.started", study_id=STUDY, run_id="r1")
    store.create_run("r1", STUDY, digest, "insurer", audit=[started])
    ended = store.audit.entry("spiffe://insurer/gateway", "run.failed", study_id=STUDY, run_id="r1")
    error = common_pb2.RunError(phase=common_pb2.PHASE_SETUP, org="insurer", reason="x")
    store.update_run("r1", state=FAILED, error=error, audit=ended)
    with pytest.raises(IllegalTransitionError):  # a second end is refused, and writes no row
        store.update_run("r1", state=FAILED, error=error, audit=ended)
    with AuditLog(audit_path(state)) as log:  # the log lives in the store's file
        assert [r.action for r in log.rows()] == ["run.started", "run.failed"]
        assert log.verify().ok


def test_interrupted_runs_fail_with_their_audit_rows(state: Path, clock: Clock):
    with Store(store_path(state), clock=clock) as first:
        digest = approve(first)
        first.create_run("r1", STUDY, digest, "insurer")
    with Store(store_path(state), clock=clock) as again:
        assert again.fail_interrupted_runs(org="insurer", actor="spiffe://insurer/gateway") == ["r1"]
        rows = again.audit.rows()
        assert rows[-1].action == "run.failed" and rows[-1].run_id == "r1" and rows[-1].details["org"] == "insurer"


def test_the_study_secret_is_made_once_and_kept(state: Path, clock: Clock):
    with Store(store_path(state), clock=clock) as first:
        approve(first)
        secret = first.study_secret(STUDY)
        assert len(secret) == 32 and first.study_secret(STUDY) == secret
    with Store(store_path(state), clock=clock) as again:
        assert again.study_secret(STUDY) == secret
