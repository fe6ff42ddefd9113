"""An append-only, hash-chained audit log per organisation: who did what to which study, when.

Each row is chained to the one before it:

    canonical(row) = JSON of {seq, at, actor, action, study_id, run_id, details}
                     (sort_keys, no whitespace, ASCII, no NaN)
    hash(row)      = SHA-256( bytes(prev_hash) || canonical(row) ),  prev_hash of row 1 = 32 zero bytes

so changing, deleting or reordering any row breaks the chain at that row, and `verify`
says where. JSON is fine here: it is local storage, never a wire field. A separate
head record (last seq and hash, written in the same transaction as the row) also
catches rows deleted from the end. SQLite triggers refuse UPDATE and DELETE on the
rows, so no code path of ours can rewrite history by accident.

The log's tables live in the gateway's database file (`audit_path` is `store_path`): the
store writes a run's state change and its audit row in one transaction (`write`), so no
run changes state without its row. `AuditLog(path)` alone opens its own connection
(tools, tests); the store shares its connection with the log it owns.

Limits, stated plainly: someone who can write the database file can drop the
triggers and rebuild the whole chain and head consistently; the chain proves that
history was not edited *after* a head hash was seen elsewhere. Anchor it by copying
`head()` somewhere the operator of this organisation cannot write (a peer, a ticket,
a WORM store) when that matters.

No patient data, ever. Callers pass identities, actions, study and run ids and a small
`details` dict of metadata (digests, counts, states, status codes). `append` refuses
detail keys outside an allow-list and any value that is not a short str, an int, a
finite float or a bool, so a record or an ID column cannot slip in by accident; the
allow-list is the reviewable place where new metadata is admitted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The gateway's database (services/gateway/store_schema.py): the audit tables live beside the store's.
DATABASE_FILENAME = "gateway.sqlite3"
GENESIS_HASH = "0" * 64
MAX_TEXT_CHARS = 200
MAX_DETAILS = 20
ACTION = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")

# Metadata a row may carry. Add a key here (reviewed) rather than bypassing the check.
DETAIL_KEYS = frozenset(
    {
        "spec_digest",
        "previous_digest",
        "result_digest",
        "state",
        "phase",
        "org",
        "peer",
        "role",
        "method",
        "code",
        "status",
        "reason",
        "joined",
        "features",
        "target",
        "alpha",
        "iterations",
        "cv_folds",
        "min_intersection",
        "paillier_bits",
        "key_id",
        "trace_id",
        "records",
        "count",
        "runs",
        "duration_ms",
        "commitment",
        "previous_run",
        "changed",
        "approver",
        "max_runs",
        "min_interval_seconds",
        "run_approval",
    }
)

DetailValue = str | int | float | bool


class AuditError(ValueError):
    """An audit row the log refuses to write (bad actor, action or details)."""


@dataclass(frozen=True)
class AuditEntry:
    """A row to write, already checked (`AuditLog.entry`), so that writing it cannot fail."""

    actor: str
    action: str
    study_id: str
    run_id: str
    details: Mapping[str, DetailValue]


@dataclass(frozen=True)
class AuditRow:
    """One audit record as stored."""

    seq: int
    at: str
    actor: str
    action: str
    study_id: str
    run_id: str
    details: Mapping[str, DetailValue]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of `AuditLog.verify`: `rows` in the log; on failure the first bad seq and why."""

    ok: bool
    rows: int
    first_bad_row: int
    problem: str


def audit_path(state_dir: Path) -> Path:
    """Where an organisation keeps its audit log: in its gateway database."""
    return Path(state_dir) / DATABASE_FILENAME


def clean_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` made fit for a row: unprintable characters replaced, cut to `limit` characters.
    A peer's text is cleaned this way rather than refused, so its event still gets its row."""
    printable = "".join(c if c.isprintable() else "?" for c in str(text))
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


def canonical_row(
    seq: int, at: str, actor: str, action: str, study_id: str, run_id: str, details: Mapping[str, DetailValue]
) -> str:
    """The text a row's hash covers."""
    row = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "study_id": study_id,
        "run_id": run_id,
        "details": dict(details),
    }
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    """SHA-256(prev_hash bytes || canonical row), hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical.encode("ascii")).hexdigest()


def _check_text(value: str, what: str, required: bool) -> None:
    if not isinstance(value, str):
        raise AuditError(f"{what} must be a string")
    if required and not value:
        raise AuditError(f"{what} is required")
    if len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise AuditError(f"{what} must be printable and at most {MAX_TEXT_CHARS} characters")


def check_details(details: Mapping[str, object], allowed_keys: frozenset[str] = DETAIL_KEYS) -> dict[str, DetailValue]:
    """A copy of `details` if every key is allowed and every value a short scalar; AuditError otherwise."""
    if len(details) > MAX_DETAILS:
        raise AuditError(f"at most {MAX_DETAILS} details per row")
    out: dict[str, DetailValue] = {}
    for key, value in details.items():
        if key not in allowed_keys:
            raise AuditError(f"detail key {key!r} is not in the audit allow-list (audit rows carry metadata only)")
        if isinstance(value, str):
            _check_text(value, f"detail {key!r}", required=False)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise AuditError(f"detail {key!r} must be a finite number")
        elif not isinstance(value, (bool, int)):
            raise AuditError(f"detail {key!r} must be a str, int, float or bool, got {type(value).__name__}")
        out[key] = value
    return out


class AuditLog:
    """The hash-chained audit log in its own SQLite file (WAL, like the store)."""

    def __init__(
        self,
        path: Path | str,
        clock: Callable[[], float] = time.time,
        allowed_keys: frozenset[str] = DETAIL_KEYS,
        *,
        connection: sqlite3.Connection | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        """Open the log in `path`, or, with `connection` and its `lock`, on a connection the
        caller owns (the store's, so that its changes and their rows commit together)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._allowed_keys = allowed_keys
        self._owns_connection = connection is None
        self._lock = lock or threading.RLock()
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=5000")
        self._conn = connection
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    """CREATE TABLE IF NOT EXISTS audit (
                        seq INTEGER PRIMARY KEY,
                        at TEXT NOT NULL,
                        actor TEXT NOT NULL,
                        action TEXT NOT NULL,
                        study_id TEXT NOT NULL,
                        run_id TEXT NOT NULL,
                        details TEXT NOT NULL,
                        prev_hash TEXT NOT NULL,
                        hash TEXT NOT NULL
                    )"""
                )
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS audit_head"
                    " (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL)"
                )
                self._conn.execute("INSERT OR IGNORE INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (GENESIS_HASH,))
                for op in ("UPDATE", "DELETE"):
                    self._conn.execute(
                        f"CREATE TRIGGER IF NOT EXISTS audit_no_{op.lower()} BEFORE {op} ON audit"
                        " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        if self._owns_connection:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entry(
        self,
        actor: str,
        action: str,
        *,
        study_id: str = "",
        run_id: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditEntry:
        """A checked row (AuditError for a bad actor, action or detail), to `write` or `append`."""
        _check_text(actor, "actor", required=True)
        if not ACTION.fullmatch(action) or len(action) > MAX_TEXT_CHARS:
            raise AuditError(f"action {action!r} must look like 'study.proposed'")
        _check_text(study_id, "study_id", required=False)
        _check_text(run_id, "run_id", required=False)
        return AuditEntry(actor, action, study_id, run_id, check_details(details or {}, self._allowed_keys))

    def append(
        self,
        actor: str,
        action: str,
        *,
        study_id: str = "",
        run_id: str = "",
        details: Mapping[str, object] | None = None,
    ) -> AuditRow:
        """Append one row in its own transaction, e.g.
        `append("spiffe://insurer/client", "study.proposed", study_id=..., details={"spec_digest": d})`.

        `actor` is the caller's certificate identity; `action` is dotted lower-case
        (`study.proposed`, `study.approved`, `run.started`, `run.succeeded`, `run.failed`,
        `result.read`, `rpc.refused`, ...). Never pass patient data in any field.
        """
        entry = self.entry(actor, action, study_id=study_id, run_id=run_id, details=details)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.write(self._conn, entry)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return row

    def write(self, db: sqlite3.Connection, entry: AuditEntry) -> AuditRow:
        """Write `entry` inside the caller's open transaction on this log's connection."""
        at = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        last_seq, prev_hash = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        seq = last_seq + 1
        e = entry
        digest = chain_hash(prev_hash, canonical_row(seq, at, e.actor, e.action, e.study_id, e.run_id, e.details))
        db.execute(
            "INSERT INTO audit (seq, at, actor, action, study_id, run_id, details, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, e.actor, e.action, e.study_id, e.run_id, _details_text(e.details), prev_hash, digest),
        )
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
        return AuditRow(seq, at, e.actor, e.action, e.study_id, e.run_id, e.details, prev_hash, digest)

    def head(self) -> tuple[int, str]:
        """(last seq, its hash): the value to copy elsewhere to anchor the chain."""
        with self._lock:
            seq, digest = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return int(seq), str(digest)

    def rows(self, after_seq: int = 0, limit: int | None = None) -> list[AuditRow]:
        """Rows with seq > after_seq, oldest first (at most `limit`)."""
        with self._lock:
            cursor = self._conn.execute(
                "SELECT seq, at, actor, action, study_id, run_id, details, prev_hash, hash FROM audit"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, -1 if limit is None else limit),
            )
            raw = cursor.fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], r[8]) for r in raw]

    def verify(self) -> VerifyResult:
        """Recompute the chain; report the first row that was modified, deleted or moved."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                head_seq, head_hash = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
                raw = self._conn.execute(
                    "SELECT seq, at, actor, action, study_id, run_id, details, prev_hash, hash FROM audit ORDER BY seq"
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        total = len(raw)
        problem = _first_problem(raw, int(head_seq), str(head_hash))
        if problem is None:
            return VerifyResult(ok=True, rows=total, first_bad_row=0, problem="")
        return VerifyResult(ok=False, rows=total, first_bad_row=problem[0], problem=problem[1])


def _details_text(details: Mapping[str, DetailValue]) -> str:
    return json.dumps(dict(details), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _first_problem(raw: list[tuple[Any, ...]], head_seq: int, head_hash: str) -> tuple[int, str] | None:
    """(seq, why) of the first bad row, or None when the chain and head are intact."""
    prev_hash = GENESIS_HASH
    expected = 1
    for seq, at, actor, action, study_id, run_id, details_text, stored_prev, stored_hash in raw:
        if seq != expected:
            return expected, f"row {expected} is missing (the next row is {seq})"
        if stored_prev != prev_hash:
            return seq, f"row {seq} does not follow row {seq - 1} (rows were deleted, inserted or reordered)"
        try:
            details = json.loads(details_text)
            if not isinstance(details, dict):
                raise ValueError("details is not an object")
            recomputed = chain_hash(prev_hash, canonical_row(seq, at, actor, action, study_id, run_id, details))
        except (ValueError, TypeError):
            return seq, f"row {seq} is unreadable (its details were altered)"
        if recomputed != stored_hash:
            return seq, f"row {seq} was modified (its hash does not match its contents)"
        prev_hash = stored_hash
        expected += 1
    last = expected - 1
    if head_seq != last or head_hash != prev_hash:
        if head_seq > last:
            return last + 1, f"rows {last + 1}..{head_seq} were deleted from the end of the log"
        return max(last, 1), f"the log's head (row {head_seq}) does not match its last row ({last})"
    return None
