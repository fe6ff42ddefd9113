"""Audit log: the hash chain verifies, and any modified, deleted or reordered row is detected."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.audit import GENESIS_HASH, AuditError, AuditLog, VerifyResult, audit_path, canonical_row

ACTOR = "spiffe://insurer/client"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return audit_path(tmp_path / "state")


@pytest.fixture
def log(path: Path) -> Iterator[AuditLog]:
    with AuditLog(path) as audit:
        yield audit


def fill(log: AuditLog, n: int = 5) -> None:
    log.append(
        ACTOR, "study.proposed", study_id="diabetes-risk-2025", details={"spec_digest": "ab" * 32, "features": 5}
    )
    for i in range(n - 1):
        log.append(
            f"spiffe://org{i}/gateway",
            "run.started",
            study_id="diabetes-risk-2025",
            run_id=f"run-{i}",
            details={"joined": i, "alpha": 0.1},
        )


def tamper(path: Path, *statements: str) -> None:
    """What an attacker with write access does: drop the guards, then edit rows."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("DROP TRIGGER audit_no_delete")
        for statement in statements:
            db.execute(statement)


def test_an_empty_log_verifies(log: AuditLog) -> None:
    assert log.verify() == VerifyResult(ok=True, rows=0, first_bad_row=0, problem="")
    assert log.head() == (0, GENESIS_HASH)


def test_rows_are_chained(log: AuditLog) -> None:
    first = log.append(
        ACTOR, "study.proposed", study_id="diabetes-risk-2025", details={"spec_digest": "ab" * 32, "features": 5}
    )
    second = log.append(
        "spiffe://hospital/gateway", "study.approved", study_id="diabetes-risk-2025", details={"spec_digest": "ab" * 32}
    )
    third = log.append(ACTOR, "result.read", run_id="run-1", details={"status": "OK", "joined": 812})
    assert [r.seq for r in (first, second, third)] == [1, 2, 3]
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash and third.prev_hash == second.hash
    canonical = canonical_row(
        1, first.at, ACTOR, "study.proposed", "diabetes-risk-2025", "", {"features": 5, "spec_digest": "ab" * 32}
    )
    assert first.hash == hashlib.sha256(bytes.fromhex(GENESIS_HASH) + canonical.encode()).hexdigest()
    assert json.loads(canonical)["details"] == {"features": 5, "spec_digest": "ab" * 32}
    assert log.rows() == [first, second, third]
    assert log.rows(after_seq=1, limit=1) == [second]
    assert log.head() == (3, third.hash)
    assert first.at.endswith("Z") and "T" in first.at
    result = log.verify()
    assert result.ok and result.rows == 3 and result.first_bad_row == 0 and result.problem == ""


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"actor": ""}, "actor is required"),
        ({"actor": "x" * 201}, "actor"),
        ({"action": "Study.Proposed"}, "action"),
        ({"action": "proposed"}, "action"),
        ({"study_id": "a\nb"}, "study_id"),
        ({"details": {"birth_date": "1970-01-01"}}, "allow-list"),
        ({"details": {"postal_code": "1234AB"}}, "allow-list"),
        ({"details": {"reason": "x" * 201}}, "at most 200"),
        ({"details": {"count": math.nan}}, "finite"),
        ({"details": {"count": math.inf}}, "finite"),
        ({"details": {"count": None}}, "str, int, float or bool"),
        ({"details": {"count": [1, 2]}}, "str, int, float or bool"),
        ({"details": {"count": {"a": 1}}}, "str, int, float or bool"),
        ({"details": {"count": b"raw"}}, "str, int, float or bool"),
    ],
)
def test_bad_rows_are_refused(log: AuditLog, kwargs: dict, message: str) -> None:
    args = {"actor": ACTOR, "action": "study.proposed", **kwargs}
    with pytest.raises(AuditError, match=message):
        log.append(args.pop("actor"), args.pop("action"), **args)
    assert log.rows() == [] and log.verify().ok


def test_too_many_details_are_refused(log: AuditLog) -> None:
    with AuditLog(log.path, allowed_keys=frozenset(f"k{i}" for i in range(30))) as wide:
        with pytest.raises(AuditError, match="at most 20"):
            wide.append(ACTOR, "study.proposed", details={f"k{i}": i for i in range(21)})
        row = wide.append(ACTOR, "study.proposed", details={"k1": 1})
    assert row.details == {"k1": 1} and log.verify().ok


def test_scalar_detail_types_survive_the_round_trip(log: AuditLog) -> None:
    details = {"status": "OK", "joined": 812, "alpha": 0.1, "count": -3, "features": True}
    log.append(ACTOR, "run.succeeded", details=details)
    assert log.rows()[0].details == details
    assert log.verify().ok


def test_sql_cannot_update_or_delete_rows(path: Path, log: AuditLog) -> None:
    fill(log)
    with sqlite3.connect(path) as db:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET actor = 'x' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit WHERE seq = 2")
    assert log.verify().ok


@pytest.mark.parametrize(
    "statements, bad_row, problem",
    [
        (["UPDATE audit SET actor = 'spiffe://hospital/client' WHERE seq = 3"], 3, "modified"),
        (['UPDATE audit SET details = \'{"alpha":0.1,"joined":999}\' WHERE seq = 3'], 3, "modified"),
        (["UPDATE audit SET details = 'not json' WHERE seq = 2"], 2, "unreadable"),
        (["UPDATE audit SET at = '2020-01-01T00:00:00.000000Z' WHERE seq = 1"], 1, "modified"),
        (["UPDATE audit SET prev_hash = hash WHERE seq = 4"], 4, "does not follow"),
        (["DELETE FROM audit WHERE seq = 3"], 3, "missing"),
        (["DELETE FROM audit WHERE seq = 1"], 1, "missing"),
        (["DELETE FROM audit WHERE seq = 5"], 5, "deleted from the end"),
        (["DELETE FROM audit WHERE seq >= 4"], 4, "deleted from the end"),
        (
            [
                "UPDATE audit SET seq = -2 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = -2",
            ],
            2,
            "",
        ),
        (
            [
                "UPDATE audit SET seq = seq + 10 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = 12",
            ],
            2,
            "",
        ),
    ],
)
def test_tampering_is_detected(path: Path, log: AuditLog, statements: list[str], bad_row: int, problem: str) -> None:
    fill(log)
    assert log.verify().ok
    tamper(path, *statements)
    result = log.verify()
    assert not result.ok and result.first_bad_row == bad_row and problem in result.problem


def test_swapping_row_contents_is_detected(path: Path, log: AuditLog) -> None:
    fill(log)
    columns = "at, actor, action, study_id, run_id, details, prev_hash, hash"
    with sqlite3.connect(path) as db:
        row2 = db.execute(f"SELECT {columns} FROM audit WHERE seq = 2").fetchone()
        row3 = db.execute(f"SELECT {columns} FROM audit WHERE seq = 3").fetchone()
    assignments = ", ".join(f"{c} = ?" for c in columns.split(", "))
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute(f"UPDATE audit SET {assignments} WHERE seq = 2", row3)
        db.execute(f"UPDATE audit SET {assignments} WHERE seq = 3", row2)
    result = log.verify()
    assert not result.ok and result.first_bad_row == 2


def test_rewriting_one_row_with_a_fresh_hash_breaks_the_next_link(path: Path, log: AuditLog) -> None:
    fill(log)
    row = log.rows()[2]
    forged = canonical_row(
        row.seq, row.at, "spiffe://someone/client", row.action, row.study_id, row.run_id, row.details
    )
    new_hash = hashlib.sha256(bytes.fromhex(row.prev_hash) + forged.encode()).hexdigest()
    tamper(path, f"UPDATE audit SET actor = 'spiffe://someone/client', hash = '{new_hash}' WHERE seq = 3")
    result = log.verify()
    assert not result.ok and result.first_bad_row == 4 and "does not follow" in result.problem


def test_a_restart_keeps_the_chain_and_continues_it(path: Path) -> None:
    with AuditLog(path) as log:
        fill(log, 3)
        head = log.head()
    with AuditLog(path) as log:
        assert log.head() == head and log.verify().ok
        row = log.append(ACTOR, "run.failed", run_id="run-0", details={"reason": "gateway restarted during the run"})
        assert row.seq == 4 and row.prev_hash == head[1]
        assert log.verify().ok and log.verify().rows == 4


def test_concurrent_appends_keep_one_chain(log: AuditLog) -> None:
    def writer(org: str) -> None:
        for i in range(20):
            log.append(f"spiffe://{org}/gateway", "rpc.refused", details={"code": "PERMISSION_DENIED", "count": i})

    threads = [threading.Thread(target=writer, args=(org,)) for org in ("insurer", "hospital", "helper")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = log.verify()
    assert result.ok and result.rows == 60
    assert [r.seq for r in log.rows()] == list(range(1, 61))


detail_values = st.one_of(
    st.text(max_size=30).filter(str.isprintable),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
entries = st.lists(
    st.tuples(
        st.sampled_from(["study.proposed", "study.approved", "run.started", "run.succeeded", "result.read"]),
        st.dictionaries(
            st.sampled_from(["spec_digest", "joined", "alpha", "status", "code"]), detail_values, max_size=4
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(entries, st.data())
def test_any_single_modified_row_is_found(rows: list[tuple[str, dict]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.sqlite3"
        with AuditLog(path) as log:
            for action, details in rows:
                log.append(ACTOR, action, study_id="s-1", details=details)
            assert log.verify().ok and [r.details for r in log.rows()] == [d for _, d in rows]
            victim = data.draw(st.integers(1, len(rows)))
            column = data.draw(st.sampled_from(["actor", "action", "study_id", "run_id", "at"]))
            tamper(path, f"UPDATE audit SET {column} = {column} || 'x' WHERE seq = {victim}")
            result = log.verify()
            assert not result.ok and result.first_bad_row == victim
