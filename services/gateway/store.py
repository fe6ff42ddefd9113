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
  run is left looking alive after a restart.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from riskmesh.v1 import common_pb2, lasso_pb2
from services.gateway.errors import (
    DuplicateRunError,
    IllegalTransitionError,
    InvalidValueError,
    NotApprovedError,
    NotAPartyError,
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

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


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

    def create_run(self, run_id: str, study_id: str, digest: str, started_by: str, trace_id: str = "") -> RunRecord:
        """A new PENDING run of the study's current, fully approved digest, started by a data owner."""
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
            db.execute(
                "INSERT INTO runs (run_id, study_id, digest, state, phase, joined, trace_id, started_by, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (run_id, study_id, digest, PENDING, common_pb2.PHASE_UNSPECIFIED, trace_id, started_by, now, now),
            )
            return self._run(db, run_id)

    def update_run(
        self,
        run_id: str,
        *,
        state: common_pb2.RunState.ValueType | None = None,
        phase: common_pb2.Phase.ValueType | None = None,
        error: common_pb2.RunError | None = None,
        joined: int | None = None,
    ) -> RunRecord:
        """Change a run; only legal state moves, and nothing at all once it is terminal.

        `error` is required when moving to FAILED, allowed when moving to CANCELLED (why),
        refused otherwise.
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

    def fail_interrupted_runs(self, reason: str = RESTART_REASON, *, org: str = "") -> list[str]:
        """End every PENDING / RUNNING run FAILED with `reason` (call once at start-up).

        A run cannot survive its gateway's restart (the orchestration lives in memory), so
        it must not look alive. The error keeps the phase the run was in; `org` names this
        organisation. Returns the ids of the runs it ended.
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
        return RunRecord(
            rid, study_id, digest, state, phase, error, joined, trace_id, started_by, created_at, updated_at
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
