"""The gateway's state at one organisation: studies, approvals, runs, results, progress
events, as records, and the rules by which they change.

The file, its tables and their migrations are `store_schema`; the store's refusals are in
`errors`; the wire form of a record is `codec`. Every public method is one transaction,
so a restart (a new `Store` on the same file) sees either all of a change or none of it.
One connection guarded by a lock makes the store safe to call from the asyncio server's
thread and from worker threads; each call is short (no network inside a transaction).

What is stored is metadata only: specs (the shape of a study, never records), their
digests, who approved which digest, run states with failure reasons, the revealed
model (the output the study exists to produce), and progress counts. The local data
path (`source_path`) is kept here and never leaves the organisation.

Rules the store enforces, because they must hold whoever calls it:
- a changed spec for an existing study replaces it and clears every approval; the
  same digest again is a no-op;
- an approval must name the current digest (`StaleDigestError` otherwise);
- a run starts only for the current, fully approved digest (all three parties: the
  two owners approve, the helper acknowledges), by a data owner, with a fresh id;
- run states move PENDING → RUNNING → SUCCEEDED / FAILED / CANCELLED (PENDING may
  also end FAILED or CANCELLED); terminal states are final;
- at start-up `fail_interrupted_runs` ends every PENDING / RUNNING run FAILED, so no
  run is left looking alive after a restart;
- a run is admitted only within the spec's run policy: at most `max_runs` counted runs of
  the digest, `min_interval_seconds` after the last one started (less a slack the caller
  gives for the other parties' setup time and clocks). A run *counts* unless it ended while
  this organisation was still in its setup (then nothing was matched, so nothing revealed);
  the count lives in this file, so it holds across restarts;
- a run approval (grant) one owner gave for the other's run is used by at most one counted run;
- a run's state change and its audit row are one transaction (the audit tables live in this
  file, see audit.py): no run starts, ends or records an input without its row.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2
from services.gateway.audit import AuditEntry, AuditLog
from services.gateway.errors import (
    DuplicateRunError,
    IllegalTransitionError,
    InvalidValueError,
    NotAPartyError,
    NotApprovedError,
    RunPolicyError,
    StaleDigestError,
    UnknownRunError,
    UnknownStudyError,
)
from services.gateway.store_schema import migrate, open_database, schema_version
from services.study.spec import normalise, owner_orgs, role_of, spec_digest

RESTART_REASON = "gateway restarted during the run"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_REASON_CHARS = 500

PENDING = common_pb2.RUN_STATE_PENDING
RUNNING = common_pb2.RUN_STATE_RUNNING
SUCCEEDED = common_pb2.RUN_STATE_SUCCEEDED
FAILED = common_pb2.RUN_STATE_FAILED
CANCELLED = common_pb2.RUN_STATE_CANCELLED
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
# A run counts towards the quota unless it ended while this organisation was still in setup.
COUNTED = (
    f"NOT (r.state IN ({FAILED}, {CANCELLED})"
    f" AND r.phase IN ({common_pb2.PHASE_UNSPECIFIED}, {common_pb2.PHASE_SETUP}))"
)
SECRET_BYTES = 32
ACTIVE_STATES = frozenset({PENDING, RUNNING})
# Allowed moves of a run's state; staying in the same non-terminal state is also allowed.
TRANSITIONS: dict[int, frozenset[int]] = {
    PENDING: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class StudyRecord:
    """A study as stored here; `spec` is the normalised current spec."""

    spec: common_pb2.StudySpec
    digest: str
    state: common_pb2.StudyState.ValueType
    proposed_by: str
    approved_by: tuple[str, ...]
    source_path: str | None
    created_at: float
    updated_at: float

    @property
    def study_id(self) -> str:
        return self.spec.study_id


@dataclass(frozen=True)
class Approval:
    """One organisation's approval of one digest."""

    org: str
    digest: str
    at: float


@dataclass(frozen=True)
class InputRecord:
    """An owner's commitment to its input of one run, and how it compares with its previous run."""

    org: str
    commitment: str
    previous_run_id: str = ""
    changed: bool = False


@dataclass(frozen=True)
class RunRecord:
    """A run as stored here."""

    run_id: str
    study_id: str
    digest: str
    state: common_pb2.RunState.ValueType
    phase: common_pb2.Phase.ValueType
    error: common_pb2.RunError | None
    joined: int
    trace_id: str
    started_by: str
    created_at: float
    updated_at: float
    inputs: tuple[InputRecord, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Grant:
    """One owner's approval of the other owner's run (of `commitment`, or of any unchanged input)."""

    id: int
    study_id: str
    digest: str
    org: str
    approved_by: str
    commitment: str
    at: float


@dataclass(frozen=True)
class PendingApproval:
    """A run of `org` that waits for `approver`'s approval of its input."""

    study_id: str
    digest: str
    org: str
    approver: str
    commitment: str
    previous_run_id: str
    changed: bool
    at: float


@dataclass(frozen=True)
class Quota:
    """The study's counted runs of its current digest, and when the next may start."""

    counted: int
    max_runs: int
    next_start: float  # epoch seconds; 0 when there is no waiting time


@dataclass(frozen=True)
class Event:
    """One stored progress event of a run; `seq` counts from 1 per run."""

    seq: int
    progress: common_pb2.Progress


class Store:
    """The gateway's SQLite state (see the module docstring for the rules it enforces)."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn = open_database(self.path)
        try:
            with self._tx() as db:
                migrate(db, self.path)
            # The audit log shares this connection: a change and its row commit together.
            self.audit = AuditLog(self.path, clock, connection=self._conn, lock=self._lock)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; IMMEDIATE for writes so that read-then-write cannot interleave."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self._tx(write=False) as db:
            return schema_version(db)

    # ---- studies -------------------------------------------------------------------

    def put_study(
        self, spec: common_pb2.StudySpec, digest: str, proposed_by: str, source_path: str | None = None
    ) -> StudyRecord:
        """Store a proposed (or re-proposed) spec.

        `digest` must be `spec_digest(spec)` (a peer's claimed digest is checked here).
        A new digest for an existing study replaces the spec, sets it PROPOSED and clears
        all approvals (they referred to the old spec); the same digest again changes
        nothing except `source_path` when one is given. Validate the spec before calling.
        """
        if digest != spec_digest(spec):
            raise InvalidValueError(f"study {spec.study_id!r}: the digest does not match the spec")
        blob = normalise(spec).SerializeToString(deterministic=True)
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT digest FROM studies WHERE study_id = ?", (spec.study_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_id, spec, digest, state, proposed_by, source_path, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (spec.study_id, blob, digest, common_pb2.STUDY_STATE_PROPOSED, proposed_by, source_path, now, now),
                )
            elif row[0] != digest:
                db.execute("DELETE FROM approvals WHERE study_id = ?", (spec.study_id,))
                db.execute(
                    "UPDATE studies SET spec = ?, digest = ?, state = ?, proposed_by = ?, updated_at = ?,"
                    " source_path = COALESCE(?, source_path) WHERE study_id = ?",
                    (blob, digest, common_pb2.STUDY_STATE_PROPOSED, proposed_by, now, source_path, spec.study_id),
                )
            elif source_path is not None:
                db.execute("UPDATE studies SET source_path = ? WHERE study_id = ?", (source_path, spec.study_id))
            db.execute(
                "INSERT INTO specs (digest, study_id, spec, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(digest) DO NOTHING",
                (digest, spec.study_id, blob, now),
            )
            return self._study(db, spec.study_id)

    def set_source_path(self, study_id: str, source_path: str) -> None:
        """Record this organisation's local data file for a study (never sent anywhere)."""
        with self._tx() as db:
            updated = db.execute("UPDATE studies SET source_path = ? WHERE study_id = ?", (source_path, study_id))
            if updated.rowcount != 1:
                raise UnknownStudyError(f"no study {study_id!r}")

    def get_study(self, study_id: str) -> StudyRecord:
        with self._tx(write=False) as db:
            return self._study(db, study_id)

    def list_studies(self) -> list[StudyRecord]:
        """All studies, newest first."""
        with self._tx(write=False) as db:
            ids = [r[0] for r in db.execute("SELECT study_id FROM studies ORDER BY created_at DESC, rowid DESC")]
            return [self._study(db, i) for i in ids]

    def get_spec(self, digest: str) -> common_pb2.StudySpec:
        """The spec with this digest, current or replaced (a run keeps the spec it started with)."""
        with self._tx(write=False) as db:
            row = db.execute("SELECT spec FROM specs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise UnknownStudyError("no spec with that digest")
        return common_pb2.StudySpec.FromString(row[0])

    def approve(self, study_id: str, org: str, digest: str) -> StudyRecord:
        """Record `org`'s approval (owners) or acknowledgement (helper) of the current digest.

        Approving twice is a no-op. When all three parties have approved, the study
        becomes APPROVED.
        """
        with self._tx() as db:
            study = self._study(db, study_id)
            if digest != study.digest:
                raise StaleDigestError(
                    f"study {study_id!r}: the approval names digest {digest[:12]}…, "
                    f"but the current spec has {study.digest[:12]}…; review the changed spec and approve its digest"
                )
            if role_of(study.spec, org) == common_pb2.ROLE_UNSPECIFIED:
                raise NotAPartyError(f"{org!r} is not a party of study {study_id!r}")
            db.execute(
                "INSERT INTO approvals (study_id, org, digest, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(study_id, org) DO NOTHING",
                (study_id, org, digest, self._clock()),
            )
            approved = {
                r[0]
                for r in db.execute("SELECT org FROM approvals WHERE study_id = ? AND digest = ?", (study_id, digest))
            }
            if {p.org for p in study.spec.parties} <= approved:
                db.execute(
                    "UPDATE studies SET state = ? WHERE study_id = ?", (common_pb2.STUDY_STATE_APPROVED, study_id)
                )
            return self._study(db, study_id)

    def approvals(self, study_id: str) -> list[Approval]:
        """Approvals of the study's current digest, oldest first."""
        with self._tx(write=False) as db:
            self._study_row(db, study_id)
            rows = db.execute(
                "SELECT a.org, a.digest, a.at FROM approvals a"
                " JOIN studies s ON s.study_id = a.study_id AND s.digest = a.digest"
                " WHERE a.study_id = ? ORDER BY a.at, a.org",
                (study_id,),
            ).fetchall()
        return [Approval(org, digest, at) for org, digest, at in rows]

    def is_approved(self, study_id: str, required_orgs: Iterable[str] | None = None) -> bool:
        """Whether every required org approved the current digest (default: all three parties)."""
        with self._tx(write=False) as db:
            study = self._study(db, study_id)
        required = set(required_orgs) if required_orgs is not None else {p.org for p in study.spec.parties}
        return required <= set(study.approved_by)

    def _study_row(self, db: sqlite3.Connection, study_id: str) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT spec, digest, state, proposed_by, source_path, created_at, updated_at FROM studies"
            " WHERE study_id = ?",
            (study_id,),
        ).fetchone()
        if row is None:
            raise UnknownStudyError(f"no study {study_id!r}")
        return tuple(row)

    def _study(self, db: sqlite3.Connection, study_id: str) -> StudyRecord:
        spec, digest, state, proposed_by, source_path, created_at, updated_at = self._study_row(db, study_id)
        approved = db.execute(
            "SELECT org FROM approvals WHERE study_id = ? AND digest = ? ORDER BY org", (study_id, digest)
        ).fetchall()
        return StudyRecord(
            spec=common_pb2.StudySpec.FromString(spec),
            digest=digest,
            state=state,
            proposed_by=proposed_by,
            approved_by=tuple(r[0] for r in approved),
            source_path=source_path,
            created_at=created_at,
            updated_at=updated_at,
        )

    # ---- runs ----------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        study_id: str,
        digest: str,
        started_by: str,
        trace_id: str = "",
        *,
        interval_slack_s: float = 0.0,
        grant_id: int | None = None,
        inputs: Iterable[InputRecord] = (),
        audit: Iterable[AuditEntry] = (),
    ) -> RunRecord:
        """A new PENDING run of the study's current, fully approved digest, started by a data owner,
        within the run policy (`RunPolicyError`); it uses run approval `grant_id` (if any), records
        the inputs known at admission and writes the audit rows, all in one transaction."""
        if not RUN_ID.fullmatch(run_id):
            raise InvalidValueError("run id must be 1-128 characters of letters, digits, '.', '_' or '-'")
        now = self._clock()
        with self._tx() as db:
            study = self._study(db, study_id)
            if digest != study.digest:
                raise StaleDigestError(f"study {study_id!r}: the run names a digest that is not the current spec's")
            if started_by not in owner_orgs(study.spec):
                raise NotAPartyError(
                    f"{started_by!r} is not a data owner of study {study_id!r}; only data owners start runs"
                )
            missing = sorted({p.org for p in study.spec.parties} - set(study.approved_by))
            if missing:
                raise NotApprovedError(f"study {study_id!r} is not approved by {', '.join(missing)}")
            if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise DuplicateRunError(f"run {run_id!r} exists already")
            _check_quota(self._quota(db, study), now, interval_slack_s)
            db.execute(
                "INSERT INTO runs (run_id, study_id, digest, state, phase, joined, trace_id, started_by, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (run_id, study_id, digest, PENDING, common_pb2.PHASE_UNSPECIFIED, trace_id, started_by, now, now),
            )
            for record in inputs:
                self._put_input(db, run_id, record)
            if grant_id is not None:
                self._use_grant(db, grant_id, run_id)
            for entry in audit:
                self.audit.write(db, entry)
            return self._run(db, run_id)

    def quota(self, study_id: str) -> Quota:
        """The counted runs of the study's current digest and the earliest next start."""
        with self._tx(write=False) as db:
            return self._quota(db, self._study(db, study_id))

    def check_quota(self, study_id: str, interval_slack_s: float = 0.0) -> None:
        """`RunPolicyError` when a run of the study could not start now."""
        _check_quota(self.quota(study_id), self._clock(), interval_slack_s)

    def _quota(self, db: sqlite3.Connection, study: StudyRecord) -> Quota:
        policy = study.spec.run_policy
        rows = db.execute(
            f"SELECT r.created_at FROM runs r WHERE r.study_id = ? AND r.digest = ? AND {COUNTED}"
            " ORDER BY r.created_at DESC",
            (study.study_id, study.digest),
        ).fetchall()
        next_start = rows[0][0] + policy.min_interval_seconds if rows and policy.min_interval_seconds else 0.0
        return Quota(len(rows), policy.max_runs, next_start)

    # ---- inputs, run approvals ------------------------------------------------------

    def study_secret(self, study_id: str) -> bytes:
        """This organisation's secret for its input commitments in the study (made on first use;
        it never leaves the organisation)."""
        with self._tx() as db:
            self._study_row(db, study_id)
            row = db.execute("SELECT secret FROM study_secrets WHERE study_id = ?", (study_id,)).fetchone()
            if row is not None:
                return bytes(row[0])
            secret = secrets.token_bytes(SECRET_BYTES)
            db.execute("INSERT INTO study_secrets (study_id, secret) VALUES (?, ?)", (study_id, secret))
            return secret

    def previous_input(self, study_id: str, org: str, before_run: str = "") -> InputRecord | None:
        """`org`'s input in its latest counted run of the study here (other than `before_run`)."""
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT i.run_id, i.commitment FROM run_inputs i JOIN runs r ON r.run_id = i.run_id"
                f" WHERE r.study_id = ? AND i.org = ? AND r.run_id != ? AND {COUNTED}"
                " ORDER BY r.created_at DESC, r.rowid DESC LIMIT 1",
                (study_id, org, before_run),
            ).fetchone()
        return None if row is None else InputRecord(org, row[1], previous_run_id=row[0])

    def record_input(
        self, run_id: str, record: InputRecord, grant_id: int | None = None, audit: AuditEntry | None = None
    ) -> bool:
        """Record an owner's input of a run (once; False when it was recorded already), using
        run approval `grant_id` if given, with its audit row, in one transaction."""
        with self._tx() as db:
            self._run(db, run_id)
            if db.execute("SELECT 1 FROM run_inputs WHERE run_id = ? AND org = ?", (run_id, record.org)).fetchone():
                return False
            self._put_input(db, run_id, record)
            if grant_id is not None:
                self._use_grant(db, grant_id, run_id)
            if audit is not None:
                self.audit.write(db, audit)
            return True

    def _put_input(self, db: sqlite3.Connection, run_id: str, record: InputRecord) -> None:
        db.execute(
            "INSERT INTO run_inputs (run_id, org, commitment, previous_run_id, changed) VALUES (?, ?, ?, ?, ?)",
            (run_id, record.org, record.commitment, record.previous_run_id, int(record.changed)),
        )

    def add_grant(
        self, study_id: str, digest: str, org: str, approved_by: str, commitment: str, audit: AuditEntry | None = None
    ) -> Grant:
        """`approved_by` approves a run of `org` (with input `commitment`, or '' for any unchanged
        input) under the current digest; the pending request it answers is cleared."""
        now = self._clock()
        with self._tx() as db:
            study = self._study(db, study_id)
            if digest != study.digest:
                raise StaleDigestError(
                    f"study {study_id!r}: the run approval names a digest that is not the current spec's"
                )
            owners = owner_orgs(study.spec)
            if org not in owners or approved_by not in owners or org == approved_by:
                raise NotAPartyError("a run approval is given by one data owner for the other's runs")
            cursor = db.execute(
                "INSERT INTO run_grants (study_id, digest, org, approved_by, commitment, at) VALUES (?, ?, ?, ?, ?, ?)",
                (study_id, digest, org, approved_by, commitment, now),
            )
            if commitment:
                db.execute(
                    "DELETE FROM pending_approvals WHERE study_id = ? AND org = ? AND commitment = ?",
                    (study_id, org, commitment),
                )
            else:
                db.execute(
                    "DELETE FROM pending_approvals WHERE study_id = ? AND org = ? AND changed = 0", (study_id, org)
                )
            if audit is not None:
                self.audit.write(db, audit)
            return Grant(int(cursor.lastrowid or 0), study_id, digest, org, approved_by, commitment, now)

    def available_grant(self, study_id: str, digest: str, org: str, commitment: str, changed: bool) -> int | None:
        """The oldest unused approval of a run of `org` with this input: one naming the
        commitment, or (when the input did not change) one for any unchanged input."""
        with self._tx(write=False) as db:
            return self._available_grant(db, study_id, digest, org, commitment, changed)

    def _available_grant(
        self, db: sqlite3.Connection, study_id: str, digest: str, org: str, commitment: str, changed: bool
    ) -> int | None:
        accepted = (commitment,) if changed else (commitment, "")
        row = db.execute(
            "SELECT g.id FROM run_grants g LEFT JOIN runs r ON r.run_id = g.run_id"
            " WHERE g.study_id = ? AND g.digest = ? AND g.org = ?"
            f" AND g.commitment IN ({', '.join('?' * len(accepted))})"
            f" AND (g.run_id IS NULL OR NOT ({COUNTED})) ORDER BY g.commitment = '', g.at, g.id LIMIT 1",
            (study_id, digest, org, *accepted),
        ).fetchone()
        return None if row is None else int(row[0])

    def _use_grant(self, db: sqlite3.Connection, grant_id: int, run_id: str) -> None:
        db.execute("UPDATE run_grants SET run_id = ? WHERE id = ?", (run_id, grant_id))

    def grants(self, study_id: str) -> list[Grant]:
        """Unused run approvals of the study's current digest, oldest first."""
        with self._tx(write=False) as db:
            study = self._study(db, study_id)
            rows = db.execute(
                "SELECT g.id, g.org, g.approved_by, g.commitment, g.at FROM run_grants g"
                " LEFT JOIN runs r ON r.run_id = g.run_id"
                f" WHERE g.study_id = ? AND g.digest = ? AND (g.run_id IS NULL OR NOT ({COUNTED}))"
                " ORDER BY g.at, g.id",
                (study_id, study.digest),
            ).fetchall()
        return [Grant(i, study_id, study.digest, o, a, c, at) for i, o, a, c, at in rows]

    def add_pending(self, pending: PendingApproval, audit: AuditEntry | None = None) -> None:
        """A run of `pending.org` waits for `pending.approver`'s approval (one entry per input)."""
        with self._tx() as db:
            self._study_row(db, pending.study_id)
            db.execute(
                "INSERT INTO pending_approvals (study_id, digest, org, approver, commitment, previous_run_id, changed,"
                " at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(study_id, org, commitment) DO UPDATE SET"
                " digest = excluded.digest, previous_run_id = excluded.previous_run_id, changed = excluded.changed,"
                " at = excluded.at",
                (
                    pending.study_id,
                    pending.digest,
                    pending.org,
                    pending.approver,
                    pending.commitment,
                    pending.previous_run_id,
                    int(pending.changed),
                    self._clock(),
                ),
            )
            if audit is not None:
                self.audit.write(db, audit)

    def pending(self, study_id: str) -> list[PendingApproval]:
        """Runs of the study's current digest waiting for an approval, oldest first."""
        with self._tx(write=False) as db:
            study = self._study(db, study_id)
            rows = db.execute(
                "SELECT org, approver, commitment, previous_run_id, changed, at FROM pending_approvals"
                " WHERE study_id = ? AND digest = ? ORDER BY at",
                (study_id, study.digest),
            ).fetchall()
        return [PendingApproval(study_id, study.digest, o, a, c, p, bool(ch), at) for o, a, c, p, ch, at in rows]

    def update_run(
        self,
        run_id: str,
        *,
        state: common_pb2.RunState.ValueType | None = None,
        phase: common_pb2.Phase.ValueType | None = None,
        error: common_pb2.RunError | None = None,
        joined: int | None = None,
        audit: AuditEntry | None = None,
    ) -> RunRecord:
        """Change a run; only legal state moves, and nothing at all once it is terminal.

        `error` is required when moving to FAILED, allowed when moving to CANCELLED (why),
        refused otherwise. `audit` is written in the same transaction as the change.
        """
        _check_run_change(state, phase, error, joined)
        with self._tx() as db:
            run = self._run(db, run_id)
            _check_transition(run, state)
            columns: dict[str, object] = {"updated_at": self._clock(), "state": state, "phase": phase, "joined": joined}
            if error is not None:
                columns.update(
                    error_phase=error.phase, error_org=error.org, error_reason=error.reason[:MAX_REASON_CHARS]
                )
            changed = {name: value for name, value in columns.items() if value is not None}
            assignments = ", ".join(f"{name} = ?" for name in changed)  # column names from the dict above only
            db.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*changed.values(), run_id))
            if audit is not None:
                self.audit.write(db, audit)
            return self._run(db, run_id)

    def get_run(self, run_id: str) -> RunRecord:
        with self._tx(write=False) as db:
            return self._run(db, run_id)

    def list_runs(self, study_id: str | None = None) -> list[RunRecord]:
        """Runs of one study, or all runs, newest first."""
        with self._tx(write=False) as db:
            if study_id is None:
                ids = db.execute("SELECT run_id FROM runs ORDER BY created_at DESC, rowid DESC").fetchall()
            else:
                ids = db.execute(
                    "SELECT run_id FROM runs WHERE study_id = ? ORDER BY created_at DESC, rowid DESC", (study_id,)
                ).fetchall()
            return [self._run(db, r[0]) for r in ids]

    def fail_interrupted_runs(self, reason: str = RESTART_REASON, *, org: str = "", actor: str = "") -> list[str]:
        """End every PENDING / RUNNING run FAILED with `reason` (call once at start-up).

        A run cannot survive its gateway's restart (the orchestration lives in memory), so
        it must not look alive. The error keeps the phase the run was in; `org` names this
        organisation; with `actor`, each run's `run.failed` audit row is written in the same
        transaction. Returns the ids of the runs it ended.
        """
        now = self._clock()
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT run_id FROM runs WHERE state IN (?, ?) ORDER BY created_at, rowid", (PENDING, RUNNING)
                )
            ]
            db.execute(
                "UPDATE runs SET state = ?, error_phase = phase, error_org = ?, error_reason = ?, updated_at = ?"
                " WHERE state IN (?, ?)",
                (FAILED, org, reason[:MAX_REASON_CHARS], now, PENDING, RUNNING),
            )
            for run_id in ids if actor else []:
                run = self._run(db, run_id)
                details = {"reason": reason[:200], "phase": common_pb2.Phase.Name(run.phase), "org": org}
                self.audit.write(
                    db, self.audit.entry(actor, "run.failed", study_id=run.study_id, run_id=run_id, details=details)
                )
        return ids

    def _run(self, db: sqlite3.Connection, run_id: str) -> RunRecord:
        row = db.execute(
            "SELECT run_id, study_id, digest, state, phase, error_phase, error_org, error_reason, joined, trace_id,"
            " started_by, created_at, updated_at FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r}")
        rid, study_id, digest, state, phase, e_phase, e_org, e_reason = row[:8]
        joined, trace_id, started_by, created_at, updated_at = row[8:]
        error = None
        if e_reason is not None:
            error = common_pb2.RunError(
                phase=common_pb2.Phase.ValueType(e_phase or 0), org=e_org or "", reason=e_reason
            )
        inputs = tuple(
            InputRecord(o, c, p, bool(ch))
            for o, c, p, ch in db.execute(
                "SELECT org, commitment, previous_run_id, changed FROM run_inputs WHERE run_id = ? ORDER BY org",
                (run_id,),
            )
        )
        return RunRecord(
            rid, study_id, digest, state, phase, error, joined, trace_id, started_by, created_at, updated_at, inputs
        )

    # ---- results and events --------------------------------------------------------

    def put_result(self, run_id: str, result: lasso_pb2.ModelResult) -> None:
        """Store (or replace) the revealed model of a run that has not failed or been cancelled.

        Store the result before marking the run SUCCEEDED; readers should serve a result
        only for a SUCCEEDED run (a run can fail after its result arrived).
        """
        with self._tx() as db:
            run = self._run(db, run_id)
            if run.state in (FAILED, CANCELLED):
                raise IllegalTransitionError(f"run {run_id!r} is {_state_name(run.state)}; it has no result")
            db.execute(
                "INSERT INTO results (run_id, result, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET result = excluded.result, created_at = excluded.created_at",
                (run_id, result.SerializeToString(deterministic=True), self._clock()),
            )

    def get_result(self, run_id: str) -> lasso_pb2.ModelResult | None:
        """The stored model of a run, or None (the run exists but has none)."""
        with self._tx(write=False) as db:
            self._run(db, run_id)
            row = db.execute("SELECT result FROM results WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else lasso_pb2.ModelResult.FromString(row[0])

    def add_event(self, progress: common_pb2.Progress) -> int:
        """Append a progress event to its run (`progress.run_id`); returns its sequence number."""
        with self._tx() as db:
            self._run(db, progress.run_id)
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?", (progress.run_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO events (run_id, seq, progress) VALUES (?, ?, ?)",
                (progress.run_id, seq, progress.SerializeToString(deterministic=True)),
            )
        return int(seq)

    def events(self, run_id: str, after_seq: int = 0) -> list[Event]:
        """The run's events with seq > after_seq, in order (WatchRun replays from here)."""
        with self._tx(write=False) as db:
            self._run(db, run_id)
            rows = db.execute(
                "SELECT seq, progress FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after_seq)
            ).fetchall()
        return [Event(seq, common_pb2.Progress.FromString(blob)) for seq, blob in rows]


def _check_run_change(
    state: int | None, phase: int | None, error: common_pb2.RunError | None, joined: int | None
) -> None:
    """The arguments of `update_run` that are wrong whatever the run's current state."""
    if state is not None and state not in TRANSITIONS:
        raise InvalidValueError(f"unknown run state {state}")
    if phase is not None and phase not in common_pb2.Phase.values():
        raise InvalidValueError(f"unknown phase {phase}")
    if joined is not None and joined < 0:
        raise InvalidValueError("joined must be >= 0")
    if state == FAILED and error is None:
        raise InvalidValueError("a FAILED run needs an error (phase, org, reason)")
    if error is not None and state not in (FAILED, CANCELLED):
        raise InvalidValueError("an error can only accompany a move to FAILED or CANCELLED")


def _check_quota(quota: Quota, now: float, slack_s: float) -> None:
    """`RunPolicyError` when a run would exceed the quota or start too soon (less `slack_s`)."""
    if quota.counted >= quota.max_runs:
        raise RunPolicyError(f"the study's run policy allows {quota.max_runs} run(s) of this spec; all are used")
    if quota.next_start and now < quota.next_start - slack_s:
        wait = quota.next_start - now
        raise RunPolicyError(f"the study's run policy needs {wait:.0f} s more before the next run may start")


def _check_transition(run: RunRecord, state: int | None) -> None:
    """Refuse any change to a finished run and any state move the lifecycle does not allow."""
    if run.terminal:
        raise IllegalTransitionError(f"run {run.run_id!r} is {_state_name(run.state)}; a finished run cannot change")
    if state is not None and state != run.state and state not in TRANSITIONS[run.state]:
        raise IllegalTransitionError(
            f"run {run.run_id!r}: {_state_name(run.state)} → {_state_name(state)} is not allowed"
        )


def _state_name(state: int) -> str:
    if state not in common_pb2.RunState.values():
        return str(state)
    return common_pb2.RunState.Name(common_pb2.RunState.ValueType(state)).removeprefix("RUN_STATE_")
