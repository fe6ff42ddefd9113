"""A bad CSV at one owner stays at that owner: the other organisations' run records, audit
logs, WatchRun streams and spans hold the phase, the organisation and a category
("hospital: input validation failed"), never a row number, a column, a value, a group of
duplicate rows or the hospital's row count. Progress from other organisations arrives as
fractions (done of 100), never counts.

The three organisations run as processes over mTLS (gateway and join servers; a run that
fails in setup needs no lasso server), each writing its own span file.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.gateway.audit import AuditLog, audit_path
from services.mesh.config import OrgConfig, load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ORGS = ("insurer", "hospital", "helper")
RECORDS = 67  # rows per owner: a count to look for
BAD_ROW = 7  # the CSV line (the header is line 1) whose BMI is out of range
BAD_VALUE = "99.123456"


@pytest.fixture(scope="module")
def leak_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("leak")
    lenient = {"min_intersection": 10, "rows_per_parameter": 1}
    paths = local_mesh_for(root, policies={org: lenient for org in ORGS})
    configs = {org: load_config(p, env={}) for org, p in paths.items()}
    data = make_study_data(RECORDS, overlap=0.5)
    sources = {"insurer": str(data.insurer.write_csv(root / "insurer.csv")),
               "hospital": str(data.hospital.write_csv(root / "hospital.csv"))}  # fmt: skip
    mesh = LocalMesh(paths, only_servers=("gateway", "encryption", "intersection", "resharing")).start()
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in configs.items()
    }
    yield root, configs, clients, data, sources
    for client in clients.values():
        client.close()
    mesh.stop()


def rewritten(source: str, out: Path, change) -> str:  # noqa: ANN001
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    change(rows)
    with out.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(out)


def out_of_range(rows: list[list[str]]) -> None:
    rows[BAD_ROW - 1][rows[0].index("bmi")] = BAD_VALUE


def twins(rows: list[list[str]]) -> None:
    """Rows 4 and 9 get the same birth date and postal code (a duplicate-ID group)."""
    rows[8][0], rows[8][1] = rows[3][0], rows[3][1]


def leaks(text: str) -> list[str]:
    """What a row-level error would carry, if any of it is in `text`."""
    patterns = [r"\brows? \d+", r"'bmi'", r"column", re.escape(BAD_VALUE), r"duplicate", rf"\b{RECORDS}\b"]
    return [p for p in patterns if re.search(p, text, re.IGNORECASE)]


def spans_of(config: OrgConfig, trace_id: str) -> list[dict]:
    """The org's spans of the trace; recorded exceptions keep their type and message, not the
    stack trace (code line numbers are not data, and would match the count by chance)."""
    spans = []
    for path in (config.state_dir / "spans").glob("*.jsonl"):
        spans += [
            s for s in map(json.loads, path.read_text().splitlines()) if s["context"]["trace_id"].endswith(trace_id)
        ]
    for span in spans:
        for event in span.get("events", []):
            event.get("attributes", {}).pop("exception.stacktrace", None)
    return spans


def run_failing_at_the_hospital(leak_mesh, study_id: str, change) -> common_pb2.Run:  # noqa: ANN001
    root, _, clients, data, sources = leak_mesh
    bad = rewritten(sources["hospital"], root / f"{study_id}.csv", change)
    study = clients["insurer"].propose(spec_for(data, study_id, min_intersection=10), sources["insurer"])
    clients["hospital"].approve(study_id, study.spec_digest, bad)
    clients["helper"].approve(study_id, study.spec_digest)
    run = clients["insurer"].start_run(study_id)
    events = list(clients["insurer"].watch(run.run_id, timeout=120))
    final = events[-1].run
    assert final.state == common_pb2.RUN_STATE_FAILED
    assert (final.error.phase, final.error.org) == (common_pb2.PHASE_SETUP, "hospital")
    for event in events:  # the insurer's WatchRun stream
        assert not leaks(str(event)), event
        if event.progress.org and event.progress.org != "insurer":
            assert event.progress.total in (0, 100) and event.progress.done <= 100, event.progress
    return final


def assert_stays_at_the_hospital(leak_mesh, final: common_pb2.Run, local_detail: str) -> None:  # noqa: ANN001
    _, configs, clients, _, _ = leak_mesh
    # The hospital keeps the whole story in its own run record (so the check below can fail).
    hospital_run = next(r for r in clients["hospital"].list_runs(final.study_id) if r.run_id == final.run_id)
    assert local_detail in hospital_run.error.reason
    for org in ("insurer", "helper"):
        run = next(r for r in clients[org].list_runs(final.study_id) if r.run_id == final.run_id)
        assert run.error.org == "hospital" and "input validation failed" in run.error.reason, run.error
        assert not leaks(str(run)), (org, run)
        with AuditLog(audit_path(configs[org].state_dir)) as log:
            rows = [r for r in log.rows() if r.run_id == final.run_id]
        assert any(r.action == "run.failed" for r in rows), org
        assert not leaks(json.dumps([r.details for r in rows])), (org, rows)
    deadline = time.monotonic() + 15  # span files are written every 0.5 s
    while not spans_of(configs["hospital"], final.trace_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)
    assert any(local_detail in json.dumps(s) for s in spans_of(configs["hospital"], final.trace_id))
    for org in ("insurer", "helper"):
        spans = spans_of(configs[org], final.trace_id)
        assert spans, org
        assert not leaks(json.dumps(spans)), (org, leaks(json.dumps(spans)))


def test_error_leak_out_of_range_value_at_the_hospital_stays_there(leak_mesh):
    final = run_failing_at_the_hospital(leak_mesh, "leak-range", out_of_range)
    assert final.error.reason.endswith("input validation failed")
    assert_stays_at_the_hospital(leak_mesh, final, f"row {BAD_ROW}, column 'bmi'")


def test_error_leak_duplicate_ids_at_the_hospital_stay_there(leak_mesh):
    final = run_failing_at_the_hospital(leak_mesh, "leak-twins", twins)
    assert_stays_at_the_hospital(leak_mesh, final, "duplicate IDs")


def test_error_leak_progress_from_other_organisations_is_fractions(leak_mesh):
    """A run that gets through the join: every event another organisation sent is a fraction."""
    _, _, clients, data, sources = leak_mesh
    study = clients["insurer"].propose(spec_for(data, "leak-progress", min_intersection=10), sources["insurer"])
    clients["hospital"].approve("leak-progress", study.spec_digest, sources["hospital"])
    clients["helper"].approve("leak-progress", study.spec_digest)
    run = clients["insurer"].start_run("leak-progress")
    events = list(clients["insurer"].watch(run.run_id, timeout=120))
    foreign = [e.progress for e in events if e.progress.org and e.progress.org != "insurer"]
    assert {p.org for p in foreign} == {"hospital", "helper"}
    assert all(p.total in (0, 100) and p.done <= 100 for p in foreign), foreign
    own = [e.progress for e in events if e.progress.org == "insurer" and e.progress.total]
    assert any(p.total not in (0, 100) for p in own)  # this org's own progress keeps its counts
