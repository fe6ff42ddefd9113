"""The gateway database file: where it lives, how it is opened, its tables and their migrations.

One SQLite file per organisation (`store_path(state_dir)`), opened in WAL mode with
foreign keys on and `synchronous=NORMAL`: a crash may lose the last committed
transactions but never corrupts the file, and readers never block the writer.
`store_schema_version` holds how many migrations ran; a file written by a newer
riskmesh (more migrations than this one knows) is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.gateway.audit import DATABASE_FILENAME
from services.gateway.errors import StoreError

STORE_FILENAME = DATABASE_FILENAME  # the audit log's tables live in the same file (audit.py)
BUSY_TIMEOUT_MS = 5000

# Schema migrations, applied in order. Never edit a released migration: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE studies (
            study_id TEXT PRIMARY KEY,
            spec BLOB NOT NULL,
            digest TEXT NOT NULL,
            state INTEGER NOT NULL,
            proposed_by TEXT NOT NULL,
            source_path TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # Every spec version ever stored, so a run can always find the spec of its digest.
        """CREATE TABLE specs (
            digest TEXT PRIMARY KEY,
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            spec BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE approvals (
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            org TEXT NOT NULL,
            digest TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (study_id, org)
        )""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            digest TEXT NOT NULL REFERENCES specs(digest),
            state INTEGER NOT NULL,
            phase INTEGER NOT NULL DEFAULT 0,
            error_phase INTEGER,
            error_org TEXT,
            error_reason TEXT,
            joined INTEGER NOT NULL DEFAULT 0,
            trace_id TEXT NOT NULL DEFAULT '',
            started_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX runs_by_study ON runs(study_id, created_at)",
        "CREATE INDEX runs_by_state ON runs(state)",
        """CREATE TABLE results (
            run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
            result BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE events (
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            seq INTEGER NOT NULL,
            progress BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    # 2: run governance (issue 14). This organisation's secret per study for its input
    # commitments; the owners' commitments per run; run approvals one owner gave the other
    # (and the run that used each); runs waiting for an approval.
    (
        """CREATE TABLE study_secrets (
            study_id TEXT PRIMARY KEY REFERENCES studies(study_id),
            secret BLOB NOT NULL
        )""",
        """CREATE TABLE run_inputs (
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            org TEXT NOT NULL,
            commitment TEXT NOT NULL,
            previous_run_id TEXT NOT NULL DEFAULT '',
            changed INTEGER NOT NULL,
            PRIMARY KEY (run_id, org)
        )""",
        """CREATE TABLE run_grants (
            id INTEGER PRIMARY KEY,
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            digest TEXT NOT NULL,
            org TEXT NOT NULL,
            approved_by TEXT NOT NULL,
            commitment TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL,
            run_id TEXT REFERENCES runs(run_id)
        )""",
        "CREATE INDEX run_grants_by_study ON run_grants(study_id, digest, org)",
        """CREATE TABLE pending_approvals (
            study_id TEXT NOT NULL REFERENCES studies(study_id),
            digest TEXT NOT NULL,
            org TEXT NOT NULL,
            approver TEXT NOT NULL,
            commitment TEXT NOT NULL,
            previous_run_id TEXT NOT NULL DEFAULT '',
            changed INTEGER NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (study_id, org, commitment)
        )""",
    ),
)


def store_path(state_dir: Path) -> Path:
    """Where an organisation's gateway keeps its database."""
    return Path(state_dir) / STORE_FILENAME


def open_database(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (the store opens its own transactions), in WAL mode."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r})")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations this file has not had yet (call inside a write transaction)."""
    db.execute("CREATE TABLE IF NOT EXISTS store_schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM store_schema_version").fetchone()
    if row is None:
        db.execute("INSERT INTO store_schema_version (version) VALUES (0)")
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(f"{path}: schema version {version} is newer than this riskmesh knows ({len(MIGRATIONS)})")
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            db.execute(statement)
    db.execute("UPDATE store_schema_version SET version = ?", (len(MIGRATIONS),))


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT version FROM store_schema_version").fetchone()[0])
