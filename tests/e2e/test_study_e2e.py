"""A whole study across three organisations as real processes over mTLS: propose,
approve, run (join + secure Lasso), result at both owners equal to scikit-learn, one
trace with a span per phase per party, refusals, and an interrupted gateway."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data, reference_join
from services.tools.traces import load_trace, phase_rows, waterfall_png
from services.mesh.config import load_config
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
OWNER_PHASES = {"setup", "hashing_encryption", "resharing", "input", "gram", "iterations", "reveal"}
HELPER_PHASES = {"setup", "intersection", "resharing", "input", "gram", "iterations", "reveal"}
ALPHA = 0.05


@pytest.fixture(scope="module")
def study_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    configs = local_mesh_for(root)
    orgs = {org: load_config(p, env={}) for org, p in configs.items()}
    data = make_study_data(300, overlap=0.5)
    sources = {"insurer": str(data.insurer.write_csv(orgs["insurer"].state_dir / "data" / "insurer.csv")),
               "hospital": str(data.hospital.write_csv(orgs["hospital"].state_dir / "data" / "hospital.csv"))}
    mesh = LocalMesh(configs).start()
    clients = {org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in orgs.items()}
    yield root, configs, mesh, clients, data, sources
    for c in clients.values():
        c.close()
    mesh.stop()


def approve_all(clients, data, sources, study_id: str, **spec_args) -> str:
    study = clients["insurer"].propose(spec_for(data, study_id, **spec_args), sources["insurer"])
    clients["hospital"].approve(study_id, study.spec_digest, sources["hospital"])
    clients["helper"].approve(study_id, study.spec_digest)
    return study.spec_digest


def run_to_end(client: GatewayClient, study_id: str, timeout: float = 240.0):
    run = client.start_run(study_id)
    final = None
    for event in client.watch(run.run_id, timeout=timeout):
        final = event.run
    return final


def test_whole_study_matches_scikit_learn_with_one_trace(study_mesh):
    root, configs, mesh, clients, data, sources = study_mesh
    approve_all(clients, data, sources, "e2e-study", alphas=[ALPHA])
    final = run_to_end(clients["insurer"], "e2e-study")
    assert final.state == common_pb2.RUN_STATE_SUCCEEDED, final
    names, x, y = reference_join(data)
    assert final.joined == len(y)
    reference = lasso_reference(names, x, y, ALPHA)
    _, insurer_result = clients["insurer"].result(final.run_id)
    _, hospital_result = clients["hospital"].result(final.run_id)
    secure = np.array([c.value for c in insurer_result.coefficients])
    plain = np.array([reference[c.feature] for c in insurer_result.coefficients])
    assert [c.feature for c in insurer_result.coefficients] == names
    assert np.max(np.abs(secure - plain)) <= 1e-5 * np.max(np.abs(plain))
    assert abs(insurer_result.intercept - reference["(intercept)"]) <= 1e-4 * max(1.0, abs(reference["(intercept)"]))
    assert [(secure_c == 0) for secure_c in secure] == [(plain_c == 0) for plain_c in plain]
    assert list(hospital_result.coefficients) == list(insurer_result.coefficients)
    # The helper learns no result, and every party records the run as succeeded.
    with pytest.raises(grpc.RpcError) as err:
        clients["helper"].result(final.run_id)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for org in ("hospital", "helper"):
        assert clients[org].list_runs("e2e-study")[0].state == common_pb2.RUN_STATE_SUCCEEDED
    # One trace, a span per phase at each party; kept as CI artifacts with the waterfall.
    expected = {("insurer", p) for p in OWNER_PHASES} | {("hospital", p) for p in OWNER_PHASES} | {("helper", p) for p in HELPER_PHASES}
    deadline = time.monotonic() + 15  # the servers export finished spans every 0.5 s
    while True:
        rows = load_trace([root], final.trace_id)
        phases = {(r.org, r.phase) for r in phase_rows(rows)}
        if expected <= phases or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert expected <= phases, sorted(expected - phases)
    assert {r.org for r in rows} == {"insurer", "hospital", "helper"}
    ARTIFACTS.mkdir(exist_ok=True)
    for spans in root.glob("*/state/spans/*.jsonl"):
        shutil.copy(spans, ARTIFACTS / f"study-{spans.name}")
    waterfall_png(rows, ARTIFACTS / "study-waterfall.png", f"e2e study, trace {final.trace_id}")
    for org, c in clients.items():
        assert c.verify_audit().ok


def test_changed_spec_needs_new_approval_before_a_run(study_mesh):
    _, _, _, clients, data, sources = study_mesh
    approve_all(clients, data, sources, "e2e-changed", alphas=[ALPHA])
    clients["insurer"].propose(spec_for(data, "e2e-changed", alphas=[0.2]), sources["insurer"])
    with pytest.raises(grpc.RpcError) as err:
        clients["insurer"].start_run("e2e-changed")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_gateway_killed_mid_run_ends_failed_everywhere_and_restarts_clean(study_mesh):
    root, configs, mesh, clients, data, sources = study_mesh
    approve_all(clients, data, sources, "e2e-restart", alphas=[ALPHA])
    run = clients["insurer"].start_run("e2e-restart")
    # Mid-run means the hospital has joined it (its key pair and CSV check come first, which
    # takes a while with 3072-bit keys): wait for that rather than for a fixed time.
    deadline = time.monotonic() + 60
    while not clients["hospital"].list_runs("e2e-restart") and time.monotonic() < deadline:
        time.sleep(0.05)
    hospital_gateway = mesh.find("hospital", "gateway")
    hospital_gateway.process.send_signal(signal.SIGKILL)
    hospital_gateway.process.wait()
    final = None
    for event in clients["insurer"].watch(run.run_id, timeout=120):
        final = event.run
    assert final.state == common_pb2.RUN_STATE_FAILED and final.error.reason
    # Restart the hospital's gateway: its interrupted run is FAILED, never stuck RUNNING.
    mesh.restart(hospital_gateway)
    restarted = clients["hospital"].list_runs("e2e-restart")[0]
    assert restarted.state == common_pb2.RUN_STATE_FAILED
    # A rerun of the same study succeeds.
    again = run_to_end(clients["insurer"], "e2e-restart")
    assert again.state == common_pb2.RUN_STATE_SUCCEEDED, again
