"""What a gateway tells other organisations about a run, and how it takes what they tell it:
progress as fractions, errors as categories, a peer's text cleaned (never refused), and a
run's end written with its audit row."""

from __future__ import annotations

import asyncio
from pathlib import Path

from riskmesh.v1 import common_pb2
from services.gateway.runs import RunCoordinator, shared_error, shared_progress
from services.gateway.store import FAILED, Store
from services.gateway.store_schema import store_path
from services.mesh.config import OrgConfig
from services.study.spec import spec_digest
from tests.unit.gateway.specs import make_spec


def test_progress_leaves_as_a_fraction_of_100():
    own = common_pb2.Progress(
        run_id="r", phase=common_pb2.PHASE_HASHING_ENCRYPTION, org="hospital", done=173, total=346,
        message="rows accepted\nby the helper",
    )  # fmt: skip
    out = shared_progress(own)
    assert (out.done, out.total) == (50, 100) and out.message == "rows accepted?by the helper"
    assert (own.done, own.total) == (173, 346)  # this org keeps its counts
    assert (shared_progress(common_pb2.Progress(done=5)).done, shared_progress(common_pb2.Progress(done=5)).total) == (
        0,
        0,
    )


def test_an_error_leaves_as_its_category():
    error = common_pb2.RunError(phase=common_pb2.PHASE_SETUP, org="hospital", reason="encryption: row 7, column 'bmi'")
    assert shared_error(error, "input validation failed").reason == "input validation failed"
    assert shared_error(common_pb2.RunError(org="x" * 500, reason="\x00" * 300)).reason == "?" * 199 + "…"


def test_a_peers_unprintable_reason_is_cleaned_and_the_run_still_ends_with_its_audit_row(tmp_path: Path):
    config = OrgConfig("insurer", "data_owner", "127.0.0.1", 7100, tmp_path, tmp_path, {}, {})
    with Store(store_path(tmp_path)) as store:
        spec = make_spec()
        digest = spec_digest(spec)
        store.put_study(spec, digest, "insurer", "/data/insurer.csv")
        for org in ("insurer", "hospital", "helper"):
            store.approve(spec.study_id, org, digest)
        store.create_run("r1", spec.study_id, digest, "insurer")
        runs = RunCoordinator(config, None, store, store.audit)  # type: ignore[arg-type]  # no peers are told
        reason = "lost\n\x07contact " * 100
        error = common_pb2.RunError(phase=common_pb2.PHASE_SETUP, org="hospital\n", reason=reason)
        asyncio.run(runs.fail("r1", error, tell_peers=False))
        run = store.get_run("r1")
        assert run.state == FAILED and run.error is not None and run.error.reason.startswith("lost??contact")
        row = store.audit.rows()[-1]
        assert row.action == "run.failed" and row.run_id == "r1" and row.details["org"] == "hospital?"
        assert store.audit.verify().ok
