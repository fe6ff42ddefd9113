"""The leak study, first of the long modules: a whole study of the suite's known data
across the three organisations' processes, with every request the helper's servers
receive recorded (tests/reliability/instrument.py). Its result must equal
scikit-learn's; suite_6_leak_scan.py later scans what it (and everything after it) left."""

from __future__ import annotations

import pytest

from riskmesh.v1 import common_pb2
from tests.reliability.harness import ORGS, KnownData, Mesh, check_coefficients
from tests.reliability.instrument import read_wire

pytestmark = pytest.mark.e2e

LEAK_STUDY = "leak-study"


def test_leak_study_is_recorded_at_the_helper_and_matches_scikit_learn(mesh: Mesh, known: KnownData) -> None:
    mesh.approve_known(known, LEAK_STUDY)
    mesh.recording(True)
    try:
        finals = mesh.run_to_end(LEAK_STUDY)
    finally:
        mesh.recording(False)
    assert {org: r.state for org, r in finals.items()} == {org: common_pb2.RUN_STATE_SUCCEEDED for org in ORGS}, finals
    run_id = finals["insurer"].run_id
    insurer, hospital = mesh.result("insurer", run_id), mesh.result("hospital", run_id)
    check_coefficients(known.data, insurer)
    assert list(hospital.coefficients) == list(insurer.coefficients)
    assert [study for _, study in mesh.tag_keys()] == [LEAK_STUDY]  # both owners derived this run's key (the same one)
    methods = {m for path in mesh.wire_files() for m, _ in read_wire(path)}
    assert {
        "/riskmesh.v1.IntersectionService/UploadRows",
        "/riskmesh.v1.ResharingService/StoreHelperShares",
        "/riskmesh.v1.LassoService/Exchange",
        "/riskmesh.v1.GatewayService/PeerStartRun",
    } <= methods, methods
