"""Leak scan, last of the long modules: after every study of the suite (the recorded leak
study, the bad inputs, the faults and their reruns, the load), with the mesh stopped so
that every log line and span is on disk, look for patient data where none may be.

Needles (services/reliability/leaks.py): every ID of every dataset the suite used (as
written and canonical), every tag HMAC(K, id) for every key K the owners derived (the
instrumented encryption servers wrote the keys outside the state directories) with
the dataset of K's study, every attribute value (as written, as float repr; for the
leak study's data also as IEEE doubles and fixed-point encodings), and the keys.

At rest: every file under every org's state directory — logs, exported spans and
metrics, the gateway's SQLite store and audit log (with their WAL files) — byte for byte,
plus the audit rows decoded. Before the scan, a canary (one attribute value of the leak
study) is planted in one log line; the same scan must find it there, and nothing else.
Every decimal form counts only as a whole number (leaks.py), for every dataset alike.
Messages: every error message the suite received and every run's failure reason.
Wire: every request message the helper's servers received during the leak study — no
ID, no tag key and no plaintext value (tags and ciphertexts cross by design).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from riskmesh.v1 import gateway_pb2
from services.gateway.audit import audit_path
from services.reliability.leaks import (
    Finding,
    Scanner,
    id_needles,
    tag_key_needles,
    tag_needles,
    value_needles,
    value_text_needles,
)
from services.reliability.ledger import Ledger
from tests.reliability.harness import ORGS, KnownData, Mesh
from tests.reliability.instrument import read_wire

pytestmark = pytest.mark.e2e


def _dataset_of(study_id: str, known: KnownData, datasets: list[KnownData]) -> KnownData:
    loads = {f"load-{k}": d for k, d in enumerate(datasets[1:])}
    return loads.get(study_id, known)


@pytest.fixture(scope="module")
def collected(mesh: Mesh, error_messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every run's failure reason at every org, then the mesh stopped (logs and spans flushed)."""
    reasons = list(error_messages)
    for org in ORGS:
        for run in mesh.gateway(org).ListRuns(gateway_pb2.ListRunsRequest(), timeout=30, wait_for_ready=True).runs:
            if run.error.reason:
                reasons.append((f"{org} run {run.run_id}", run.error.reason))
    mesh.stop()
    return reasons


@pytest.fixture(scope="module")
def tag_keys(mesh: Mesh) -> list[tuple[bytes, str]]:
    keys = mesh.tag_keys()
    assert keys, "no tag key was captured: the instrumented encryption servers did not run"
    return keys


@pytest.fixture(scope="module")
def at_rest(known: KnownData, datasets: list[KnownData], tag_keys: list[tuple[bytes, str]]) -> Scanner:
    needles = (
        id_needles([p for d in datasets for p in d.patients])
        + value_needles(known.cells)
        + tag_key_needles([k for k, _ in tag_keys])
    )
    for data in datasets[1:]:
        needles += value_text_needles(data.cells)
    for key, study in tag_keys:
        needles += tag_needles(_dataset_of(study, known, datasets).canonical_ids, [key])
    return Scanner(needles)


def _state_files(mesh: Mesh) -> list[Path]:
    return sorted(p for org in ORGS for p in mesh.orgs[org].state_dir.rglob("*") if p.is_file())


def _table_cells(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
    """Each table's cells, one per line (text as UTF-8, blobs as they are, numbers as text)."""
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = []
    for table in tables:
        cells = [cell for row in db.execute(f'SELECT * FROM "{table}"') for cell in row if cell is not None]
        encoded = [c if isinstance(c, bytes) else str(c).encode("utf-8", "surrogateescape") for c in cells]
        out.append((table, b"\n".join(encoded)))
    return out


def _record_findings(ledger: Ledger, group: str, findings: list[Finding]) -> None:
    for finding in findings:
        ledger.record(
            "leaks",
            group,
            finding.describe(),
            False,
            f"{finding.needle.kind} found at {finding.where} offset {finding.offset}",
        )


@pytest.mark.reliability("leaks", "logs, spans, SQLite and audit rows")
def test_logs_spans_audit_rows_and_sqlite_files_hold_no_patient_data_but_the_canary(
    mesh: Mesh, known: KnownData, collected: list[tuple[str, str]], at_rest: Scanner, ledger: Ledger
) -> None:
    files = _state_files(mesh)
    kinds = {p.parent.name if p.parent.name in ("logs", "spans") else "sqlite" for p in files}
    assert {"logs", "spans", "sqlite"} <= kinds, kinds
    canary_log = mesh.orgs["insurer"].state_dir / "logs" / "gateway.log"
    canary = next(cell for cell in known.cells if len(cell.lstrip("-")) >= 8)
    start = canary_log.stat().st_size
    with canary_log.open("a") as log:
        log.write(f"reliability canary: {canary}\n")
    end = canary_log.stat().st_size
    findings = at_rest.scan_files(files)
    in_canary = [f for f in findings if f.where == str(canary_log) and start <= f.offset < end]
    ledger.record(
        "canary",
        "planted in a log line",
        f"value {canary} in {canary_log.name}",
        bool(in_canary),
        f"found {len(in_canary)} time(s) by the scan of {len(files)} files",
    )
    leaks = [f for f in findings if f not in in_canary]
    # Audit rows decoded (the file scan already read their bytes), and every table's cells one
    # by one: a record's columns abut in the file, where a postal code must stand alone (leaks.py).
    for org in ORGS:
        with sqlite3.connect(f"file:{audit_path(mesh.orgs[org].state_dir)}?mode=ro", uri=True) as db:
            rows = [
                (f"{org} audit row {seq}", json.dumps([actor, action, study, run, details]))
                for seq, actor, action, study, run, details in db.execute(
                    "SELECT seq, actor, action, study_id, run_id, details FROM audit"
                )
            ]
            leaks += at_rest.scan_texts(rows)
            leaks += [f for table, cells in _table_cells(db) for f in at_rest.scan_bytes(cells, f"{org} table {table}")]
    _record_findings(ledger, "logs, spans, SQLite and audit rows", leaks)
    assert in_canary, "the scanner did not find the canary planted in a log"
    assert not leaks, [f.describe() for f in leaks[:20]]


@pytest.mark.reliability("leaks", "error messages and failure reasons")
def test_error_messages_hold_no_patient_data(
    collected: list[tuple[str, str]], at_rest: Scanner, ledger: Ledger
) -> None:
    assert len(collected) > 100, "the other modules' error messages were not collected"
    leaks = at_rest.scan_texts(collected)
    _record_findings(ledger, "error messages and failure reasons", leaks)
    assert not leaks, [f.describe() for f in leaks[:20]]


@pytest.mark.reliability("leaks", "the wire to the helper")
def test_the_helper_receives_no_id_no_tag_key_and_no_plaintext_value(
    mesh: Mesh, known: KnownData, collected: list[tuple[str, str]], tag_keys: list[tuple[bytes, str]], ledger: Ledger
) -> None:
    leak_keys = [k for k, study in tag_keys if study == "leak-study"]
    scanner = Scanner(id_needles(known.patients) + value_needles(known.cells) + tag_key_needles(leak_keys))
    records = [(path.name, method, data) for path in mesh.wire_files() for method, data in read_wire(path)]
    uploads = [data for _, method, data in records if method.endswith("/UploadRows")]
    assert sum(len(d) for d in uploads) > len(known.patients) * 128, "the helper's uploads were not recorded"
    leaks: list[Finding] = []
    for name, method, data in records:
        leaks += scanner.scan_bytes(data, f"{name}:{method}")
    # The scan is not vacuous: a value's fixed-point encoding, an ID and the tag key, each
    # planted into a copy of a recorded upload, are found.
    sample = bytearray(uploads[-1])
    planted = [value_needles([known.cells[3]])[-1].data, known.patients[5].canonical.encode(), leak_keys[0]]
    for at, needle in zip((64, 256, 512), planted, strict=False):
        sample[at : at + len(needle)] = needle
    found = {f.needle.data for f in scanner.scan_bytes(bytes(sample), "planted")}
    _record_findings(ledger, "the wire to the helper", leaks)
    assert set(planted) <= found, "the wire scan missed planted patient data"
    assert not leaks, [f.describe() for f in leaks[:20]]
