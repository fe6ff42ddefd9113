"""Gateway store: round trips (and their wire form), approvals and digests, run lifecycle, restart, events, results."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from riskmesh.v1 import common_pb2, lasso_pb2
from services.gateway.codec import run_to_proto, study_to_proto
from services.gateway.errors import (
    DuplicateRunError,
    IllegalTransitionError,
    InvalidValueError,
    NotAPartyError,
    NotApprovedError,
    StaleDigestError,
    StoreError,
    UnknownRunError,
    UnknownStudyError,
)
from services.gateway.store import CANCELLED, FAILED, PENDING, RESTART_REASON, RUNNING, SUCCEEDED, Store
from services.gateway.store_schema import MIGRATIONS, store_path
from services.study.spec import normalise, spec_digest
from tests.unit.gateway.specs import make_spec

PARTIES = ("insurer", "hospital", "helper")


class Clock:
    """A deterministic clock: every call is one second later."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return store_path(tmp_path / "insurer" / "state")


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store(path, clock=Clock()) as s:
        yield s


def propose(
    store: Store,
    spec: common_pb2.StudySpec | None = None,
    by: str = "insurer",
    source_path: str | None = "/data/insurer.csv",
) -> str:
    spec = spec or make_spec()
    digest = spec_digest(spec)
    store.put_study(spec, digest, by, source_path)
    return digest


def approved(store: Store) -> str:
    digest = propose(store)
    for org in PARTIES:
        store.approve("diabetes-risk-2025", org, digest)
    return digest


def new_run(store: Store, run_id: str = "run-1") -> str:
    digest = approved(store) if not store.list_studies() else store.get_study("diabetes-risk-2025").digest
    store.create_run(run_id, "diabetes-risk-2025", digest, "insurer", trace_id="ab" * 16)
    return run_id


def test_opens_in_wal_mode_with_the_current_schema(path: Path, store: Store) -> None:
    assert path.name == "gateway.sqlite3" and path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == len(MIGRATIONS)


def test_a_database_from_a_newer_version_is_refused(path: Path, store: Store) -> None:
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE store_schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_study_round_trip(store: Store) -> None:
    spec = make_spec()
    digest = spec_digest(spec)
    record = store.put_study(spec, digest, "insurer", "/data/insurer.csv")
    assert record == store.get_study("diabetes-risk-2025")
    assert record.spec == normalise(spec) and record.digest == digest and record.study_id == "diabetes-risk-2025"
    assert record.state == common_pb2.STUDY_STATE_PROPOSED and record.proposed_by == "insurer"
    assert record.approved_by == () and record.source_path == "/data/insurer.csv"
    wire = study_to_proto(record)
    assert wire.spec_digest == digest and wire.proposed_by == "insurer" and wire.spec == normalise(spec)
    assert "insurer.csv" not in str(wire)  # the local path never goes on the wire
    assert store.get_spec(digest) == normalise(spec)


def test_a_digest_that_does_not_match_its_spec_is_refused(store: Store) -> None:
    with pytest.raises(InvalidValueError, match="digest does not match"):
        store.put_study(make_spec(), "0" * 64, "insurer")
    with pytest.raises(UnknownStudyError):
        store.get_study("diabetes-risk-2025")


def test_unknown_ids_are_refused(store: Store) -> None:
    for call in (
        lambda: store.get_study("nope"),
        lambda: store.approve("nope", "insurer", "0" * 64),
        lambda: store.approvals("nope"),
        lambda: store.is_approved("nope"),
        lambda: store.set_source_path("nope", "/x"),
        lambda: store.get_spec("0" * 64),
    ):
        with pytest.raises(UnknownStudyError):
            call()
    for run_call in (
        lambda: store.get_run("nope"),
        lambda: store.update_run("nope", phase=common_pb2.PHASE_GRAM),
        lambda: store.get_result("nope"),
        lambda: store.put_result("nope", lasso_pb2.ModelResult()),
        lambda: store.add_event(common_pb2.Progress(run_id="nope")),
        lambda: store.events("nope"),
    ):
        with pytest.raises(UnknownRunError):
            run_call()
    assert issubclass(UnknownRunError, LookupError) and issubclass(UnknownStudyError, LookupError)


def test_approvals_make_the_study_approved_once_all_three_parties_signed(store: Store) -> None:
    digest = propose(store)
    store.approve("diabetes-risk-2025", "insurer", digest)
    record = store.approve("diabetes-risk-2025", "hospital", digest)
    assert record.state == common_pb2.STUDY_STATE_PROPOSED and record.approved_by == ("hospital", "insurer")
    assert store.is_approved("diabetes-risk-2025", ["insurer", "hospital"])
    assert not store.is_approved("diabetes-risk-2025")
    record = store.approve("diabetes-risk-2025", "helper", digest)
    assert record.state == common_pb2.STUDY_STATE_APPROVED and record.approved_by == ("helper", "hospital", "insurer")
    assert store.is_approved("diabetes-risk-2025")
    assert [a.org for a in store.approvals("diabetes-risk-2025")] == ["insurer", "hospital", "helper"]
    assert all(a.digest == digest for a in store.approvals("diabetes-risk-2025"))
    first = store.approvals("diabetes-risk-2025")
    store.approve("diabetes-risk-2025", "insurer", digest)  # twice: a no-op
    assert store.approvals("diabetes-risk-2025") == first


def test_a_stale_digest_is_refused(store: Store) -> None:
    old = propose(store)
    changed = make_spec()
    changed.model.alphas[0] = 0.2
    propose(store, changed, by="hospital")
    with pytest.raises(StaleDigestError, match="current spec"):
        store.approve("diabetes-risk-2025", "insurer", old)
    assert store.approvals("diabetes-risk-2025") == []


def test_only_parties_approve(store: Store) -> None:
    digest = propose(store)
    with pytest.raises(NotAPartyError):
        store.approve("diabetes-risk-2025", "stranger", digest)


def test_a_changed_spec_replaces_the_study_and_clears_approvals(store: Store) -> None:
    old = approved(store)
    changed = make_spec()
    changed.min_intersection = 50
    new = spec_digest(changed)
    record = store.put_study(changed, new, "hospital")
    assert record.digest == new and record.spec.min_intersection == 50
    assert (
        record.state == common_pb2.STUDY_STATE_PROPOSED
        and record.approved_by == ()
        and record.proposed_by == "hospital"
    )
    assert record.source_path == "/data/insurer.csv"  # kept when not given again
    assert not store.is_approved("diabetes-risk-2025") and store.approvals("diabetes-risk-2025") == []
    assert store.get_spec(old).min_intersection == 10  # runs of the old digest still find their spec
    assert len(store.list_studies()) == 1


def test_the_same_spec_again_is_idempotent(store: Store) -> None:
    digest = approved(store)
    before = store.get_study("diabetes-risk-2025")
    again = store.put_study(make_spec(), digest, "insurer")
    assert again == before and again.state == common_pb2.STUDY_STATE_APPROVED
    moved = store.put_study(make_spec(), digest, "insurer", "/data/new.csv")
    assert moved.source_path == "/data/new.csv" and moved.approved_by == before.approved_by


def test_source_path_stays_local_and_can_be_set(store: Store) -> None:
    propose(store, source_path=None)
    assert store.get_study("diabetes-risk-2025").source_path is None
    store.set_source_path("diabetes-risk-2025", "/srv/hospital.csv")
    assert store.get_study("diabetes-risk-2025").source_path == "/srv/hospital.csv"


def test_studies_are_listed_newest_first(store: Store) -> None:
    for study_id in ("study-a", "study-b", "study-c"):
        propose(store, make_spec(study_id))
    assert [s.study_id for s in store.list_studies()] == ["study-c", "study-b", "study-a"]


def test_a_run_needs_every_approval_of_the_current_digest(store: Store) -> None:
    digest = propose(store)
    store.approve("diabetes-risk-2025", "insurer", digest)
    store.approve("diabetes-risk-2025", "hospital", digest)
    with pytest.raises(NotApprovedError, match="helper"):
        store.create_run("run-1", "diabetes-risk-2025", digest, "insurer")
    store.approve("diabetes-risk-2025", "helper", digest)
    with pytest.raises(StaleDigestError):
        store.create_run("run-1", "diabetes-risk-2025", "f" * 64, "insurer")
    run = store.create_run("run-1", "diabetes-risk-2025", digest, "insurer", trace_id="ab" * 16)
    assert (run.state, run.phase, run.error, run.joined, run.started_by) == (
        PENDING,
        common_pb2.PHASE_UNSPECIFIED,
        None,
        0,
        "insurer",
    )
    assert run.trace_id == "ab" * 16 and run.digest == digest and not run.terminal
    assert store.get_run("run-1") == run
    with pytest.raises(DuplicateRunError):
        store.create_run("run-1", "diabetes-risk-2025", digest, "hospital")


def test_a_changed_spec_without_new_approvals_cannot_run(store: Store) -> None:
    old = approved(store)
    changed = make_spec()
    changed.title = "changed"
    new = propose(store, changed)
    for digest, error in ((old, StaleDigestError), (new, NotApprovedError)):
        with pytest.raises(error):
            store.create_run("run-1", "diabetes-risk-2025", digest, "insurer")


def test_only_a_data_owner_starts_a_run_and_run_ids_are_checked(store: Store) -> None:
    digest = approved(store)
    for who in ("helper", "stranger"):
        with pytest.raises(NotAPartyError):
            store.create_run("run-1", "diabetes-risk-2025", digest, who)
    for bad in ("", "-x", "a b", "x" * 129, "run/1"):
        with pytest.raises(InvalidValueError):
            store.create_run(bad, "diabetes-risk-2025", digest, "insurer")
    with pytest.raises(UnknownStudyError):
        store.create_run("run-1", "nope", digest, "insurer")


LEGAL = {
    (PENDING, RUNNING),
    (PENDING, FAILED),
    (PENDING, CANCELLED),
    (RUNNING, SUCCEEDED),
    (RUNNING, FAILED),
    (RUNNING, CANCELLED),
    (PENDING, PENDING),
    (RUNNING, RUNNING),
}
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
PATH_TO: dict[int, list[int]] = {
    PENDING: [],
    RUNNING: [RUNNING],
    SUCCEEDED: [RUNNING, SUCCEEDED],
    FAILED: [FAILED],
    CANCELLED: [CANCELLED],
}


def _error(reason: str = "peer vanished") -> common_pb2.RunError:
    return common_pb2.RunError(phase=common_pb2.PHASE_INTERSECTION, org="helper", reason=reason)


def _move(store: Store, run_id: str, state: int) -> None:
    store.update_run(run_id, state=state, error=_error() if state == FAILED else None)  # type: ignore[arg-type]


@pytest.mark.parametrize("start, end", list(itertools.product(STATES, STATES)))
def test_run_state_transitions(store: Store, start: int, end: int) -> None:
    new_run(store)
    for state in PATH_TO[start]:
        _move(store, "run-1", state)
    assert store.get_run("run-1").state == start
    if (start, end) in LEGAL:
        _move(store, "run-1", end)
        assert store.get_run("run-1").state == end
    else:
        with pytest.raises(IllegalTransitionError):
            _move(store, "run-1", end)
        assert store.get_run("run-1").state == start


def test_a_finished_run_cannot_change_at_all(store: Store) -> None:
    new_run(store)
    store.update_run("run-1", state=RUNNING)
    store.update_run("run-1", state=SUCCEEDED, joined=1234)
    with pytest.raises(IllegalTransitionError, match="SUCCEEDED"):
        store.update_run("run-1", phase=common_pb2.PHASE_REVEAL)
    with pytest.raises(IllegalTransitionError):
        store.update_run("run-1", joined=1)


def test_run_updates_record_phase_joined_and_error(store: Store) -> None:
    new_run(store)
    run = store.update_run("run-1", state=RUNNING, phase=common_pb2.PHASE_INTERSECTION)
    assert (run.state, run.phase) == (RUNNING, common_pb2.PHASE_INTERSECTION)
    run = store.update_run("run-1", joined=812, phase=common_pb2.PHASE_GRAM)
    assert (run.joined, run.phase, run.state) == (812, common_pb2.PHASE_GRAM, RUNNING)
    assert run.updated_at > run.created_at
    run = store.update_run("run-1", state=FAILED, error=_error("intersection below the minimum"))
    assert run.error == _error("intersection below the minimum") and run.terminal
    wire = run_to_proto(run)
    assert wire.error.reason == "intersection below the minimum" and wire.joined == 812 and wire.state == FAILED
    assert wire.spec_digest == run.digest and wire.started_by == "insurer" and wire.trace_id == "ab" * 16


def test_run_update_arguments_are_checked(store: Store) -> None:
    new_run(store)
    with pytest.raises(InvalidValueError, match="needs an error"):
        store.update_run("run-1", state=FAILED)
    with pytest.raises(InvalidValueError, match="only accompany"):
        store.update_run("run-1", state=RUNNING, error=_error())
    with pytest.raises(InvalidValueError):
        store.update_run("run-1", state=common_pb2.RUN_STATE_UNSPECIFIED)
    with pytest.raises(InvalidValueError):
        store.update_run("run-1", phase=99)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        store.update_run("run-1", joined=-1)
    cancelled = store.update_run(
        "run-1", state=CANCELLED, error=common_pb2.RunError(org="hospital", reason="cancelled by hospital")
    )
    assert cancelled.error is not None and cancelled.error.reason == "cancelled by hospital"


def test_runs_are_listed_newest_first_and_by_study(store: Store) -> None:
    new_run(store, "run-1")
    new_run(store, "run-2")
    propose(store, make_spec("other-study"))
    assert [r.run_id for r in store.list_runs()] == ["run-2", "run-1"]
    assert [r.run_id for r in store.list_runs("diabetes-risk-2025")] == ["run-2", "run-1"]
    assert store.list_runs("other-study") == []


def _result() -> lasso_pb2.ModelResult:
    return lasso_pb2.ModelResult(
        coefficients=[
            lasso_pb2.Coefficient(feature="bmi", value=0.25),
            lasso_pb2.Coefficient(feature="smoker", value=1.5),
        ],
        intercept=2.0,
        joined=812,
        alpha=0.1,
        cv_curve=[lasso_pb2.CvPoint(alpha=0.1, mean_squared_error=3.0)],
        iterations=100,
        target="hospital_days",
    )


def test_results_round_trip(store: Store) -> None:
    new_run(store)
    assert store.get_result("run-1") is None
    store.update_run("run-1", state=RUNNING)
    store.put_result("run-1", _result())
    store.update_run("run-1", state=SUCCEEDED, joined=812)
    assert store.get_result("run-1") == _result()


def test_a_failed_or_cancelled_run_takes_no_result(store: Store) -> None:
    new_run(store, "run-1")
    new_run(store, "run-2")
    store.update_run("run-1", state=FAILED, error=_error())
    store.update_run("run-2", state=CANCELLED)
    for run_id in ("run-1", "run-2"):
        with pytest.raises(IllegalTransitionError):
            store.put_result(run_id, _result())


def test_events_replay_in_order_after_a_sequence_number(store: Store) -> None:
    new_run(store)
    progress = [
        common_pb2.Progress(run_id="run-1", phase=common_pb2.PHASE_HASHING_ENCRYPTION, org="insurer", done=i, total=3)
        for i in range(3)
    ]
    assert [store.add_event(p) for p in progress] == [1, 2, 3]
    assert [e.progress for e in store.events("run-1")] == progress
    assert [e.seq for e in store.events("run-1", after_seq=1)] == [2, 3]
    assert store.events("run-1", after_seq=3) == []


def test_concurrent_writers_from_threads_get_distinct_sequence_numbers(store: Store) -> None:
    new_run(store)
    seqs: list[int] = []

    def writer(org: str) -> None:
        for i in range(25):
            seqs.append(store.add_event(common_pb2.Progress(run_id="run-1", org=org, done=i)))

    threads = [threading.Thread(target=writer, args=(org,)) for org in PARTIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 76))
    assert [e.seq for e in store.events("run-1")] == list(range(1, 76))


def test_a_restart_keeps_everything(path: Path) -> None:
    with Store(path, clock=Clock()) as store:
        digest = approved(store)
        new_run(store)
        store.update_run("run-1", state=RUNNING, phase=common_pb2.PHASE_REVEAL, joined=812)
        store.put_result("run-1", _result())
        store.update_run("run-1", state=SUCCEEDED)
        store.add_event(
            common_pb2.Progress(run_id="run-1", phase=common_pb2.PHASE_REVEAL, org="insurer", done=1, total=1)
        )
        before = (
            store.get_study("diabetes-risk-2025"),
            store.approvals("diabetes-risk-2025"),
            store.list_runs(),
            store.events("run-1"),
        )
    with Store(path) as store:
        after = (
            store.get_study("diabetes-risk-2025"),
            store.approvals("diabetes-risk-2025"),
            store.list_runs(),
            store.events("run-1"),
        )
        assert after == before
        assert store.get_result("run-1") == _result() and store.is_approved("diabetes-risk-2025")
        assert store.get_spec(digest) == normalise(make_spec())
        assert store.fail_interrupted_runs() == []
        assert store.schema_version() == len(MIGRATIONS)


def test_interrupted_runs_fail_with_the_reason_after_a_restart(path: Path) -> None:
    with Store(path, clock=Clock()) as store:
        new_run(store, "pending")
        new_run(store, "running")
        new_run(store, "done")
        store.update_run("running", state=RUNNING, phase=common_pb2.PHASE_GRAM)
        store.update_run("done", state=RUNNING)
        store.update_run("done", state=SUCCEEDED)
    with Store(path) as store:
        assert store.fail_interrupted_runs(org="insurer") == ["pending", "running"]
        running = store.get_run("running")
        assert running.state == FAILED and running.error == common_pb2.RunError(
            phase=common_pb2.PHASE_GRAM, org="insurer", reason=RESTART_REASON
        )
        assert RESTART_REASON == "gateway restarted during the run"
        assert store.get_run("pending").state == FAILED and store.get_run("pending").error.reason == RESTART_REASON  # type: ignore[union-attr]
        assert store.get_run("done").state == SUCCEEDED and store.get_run("done").error is None
        assert store.fail_interrupted_runs() == []
        with pytest.raises(IllegalTransitionError):
            store.update_run("running", state=RUNNING)
