"""A whole study across three organisations as real processes over mTLS: propose,
approve, run (join + secure Lasso), result at both owners equal to scikit-learn, one
trace with a span per phase per party, refusals, and an interrupted gateway."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.mesh.config import load_config
from services.mesh.telemetry import read_metrics
from services.mesh.tls import MeshCredentials
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data, reference_join
from services.tools.launcher import LocalMesh, local_mesh_for
from services.tools.traces import load_trace, phase_rows, waterfall_png

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
    sources = {
        "insurer": str(data.insurer.write_csv(orgs["insurer"].state_dir / "data" / "insurer.csv")),
        "hospital": str(data.hospital.write_csv(orgs["hospital"].state_dir / "data" / "hospital.csv")),
    }
    mesh = LocalMesh(configs).start()
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in orgs.items()
    }
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
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
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
    expected = (
        {("insurer", p) for p in OWNER_PHASES}
        | {("hospital", p) for p in OWNER_PHASES}
        | {("helper", p) for p in HELPER_PHASES}
    )
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
    for c in clients.values():
        assert c.verify_audit().ok


def test_operator_metrics_from_every_organisation(study_mesh):
    """Runs, phase durations, RPCs and refusals reach each server's metrics export (JSON
    lines here; OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set), with no data in attributes."""
    root, configs, mesh, clients, data, sources = study_mesh
    approve_all(clients, data, sources, "metrics-study", alphas=[ALPHA])
    assert run_to_end(clients["insurer"], "metrics-study").state == common_pb2.RUN_STATE_SUCCEEDED
    orgs = {org: load_config(path, env={}) for org, path in configs.items()}
    # The insurer's client may call its own gateway only: the hospital's refuses it.
    credentials = MeshCredentials(orgs["insurer"].pki_dir, "insurer", "client")
    with credentials.sync_channel("hospital", "gateway", orgs["hospital"].self_endpoint.address("gateway")) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            gateway_pb2_grpc.GatewayServiceStub(channel).GetInfo(gateway_pb2.GetInfoRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    deadline = time.monotonic() + 20  # exported every 5 s
    while True:
        points = read_metrics([p for c in orgs.values() for p in (c.state_dir / "metrics").glob("*.jsonl")])
        named = {n: [p for p in points if p["name"] == n] for n in ("riskmesh.runs", "riskmesh.phase.duration")}
        runs = {(p["org"], p["attributes"].get("riskmesh.outcome")): p["value"] for p in named["riskmesh.runs"]}
        phases = {(p["org"], p["attributes"]["riskmesh.phase"]) for p in named["riskmesh.phase.duration"]}
        refusals = [p for p in points if p["name"] == "riskmesh.rpc.refusals"]
        done = all(runs.get((org, "succeeded"), 0) >= 1 for org in orgs) and refusals
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    for org in orgs:
        assert runs.get((org, "started"), 0) >= 1 and runs.get((org, "succeeded"), 0) >= 1, runs
        wanted = HELPER_PHASES if org == "helper" else OWNER_PHASES
        assert wanted <= {phase for o, phase in phases if o == org}, (org, phases)
    calls = [p for p in points if p["name"] == "riskmesh.rpc.calls"]
    assert {p["org"] for p in calls} == set(orgs) and {p["server"] for p in calls} >= {"gateway", "resharing", "lasso"}
    refused_here = [
        (
            p["org"],
            p["attributes"]["rpc.method"].rsplit("/", 1)[-1],
            p["attributes"]["riskmesh.caller.org"],
            p["attributes"]["rpc.grpc.status_code"],
        )
        for p in refusals
    ]
    assert ("hospital", "GetInfo", "insurer", "PERMISSION_DENIED") in refused_here, refused_here
    # Attributes are names from small fixed sets: methods, phases, outcomes, orgs, codes.
    allowed = {"riskmesh.outcome", "riskmesh.phase", "rpc.method", "riskmesh.caller.org", "rpc.grpc.status_code"}
    for p in points:
        assert set(p["attributes"]) <= allowed, p
        for key, value in p["attributes"].items():
            assert re.fullmatch(r"[A-Za-z0-9_./-]{0,80}", str(value)), (key, value)
        if "riskmesh.caller.org" in p["attributes"]:
            assert p["attributes"]["riskmesh.caller.org"] in {"", *orgs}


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
    events = clients["insurer"].watch(run.run_id, timeout=120)
    for event in events:  # killed once the hospital is in the join: its gateway is needed until the end
        if event.progress.org == "hospital" and event.progress.phase == common_pb2.PHASE_HASHING_ENCRYPTION:
            break
    else:
        pytest.fail("the run ended before the hospital's hashing/encryption phase")
    hospital_gateway = mesh.find("hospital", "gateway")
    hospital_gateway.process.send_signal(signal.SIGKILL)
    hospital_gateway.process.wait()
    final = None
    for event in events:
        final = event.run
    assert final.state == common_pb2.RUN_STATE_FAILED and final.error.reason
    # Restart the hospital's gateway: its interrupted run is FAILED, never stuck RUNNING.
    mesh.restart(hospital_gateway)
    restarted = clients["hospital"].list_runs("e2e-restart")[0]
    assert restarted.state == common_pb2.RUN_STATE_FAILED
    # A rerun of the same study succeeds.
    again = run_to_end(clients["insurer"], "e2e-restart")
    assert again.state == common_pb2.RUN_STATE_SUCCEEDED, again


def wait_offline_ready(clients, study_id: str, timeout: float = 120.0) -> dict[str, gateway_pb2.OfflineStatus]:
    """Both owners' material for the study's next run (key pair, pool for the other's key)."""
    deadline = time.monotonic() + timeout
    while True:
        status = {org: clients[org].offline_status(study_id) for org in ("insurer", "hospital")}
        if all(s.ready for s in status.values()) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_runs_use_keys_and_pools_made_before_them_and_fall_back_after_a_restart(study_mesh):
    """docs/adr/0013: after approval each owner prepares the next run's key pair and its pool for
    the other owner's announced key; a run uses them once; the next run's are made after it; a
    restarted resharing server has lost its prepared key, and the run makes one in-run instead."""
    root, configs, mesh, clients, data, sources = study_mesh
    approve_all(clients, data, sources, "e2e-offline", alphas=[ALPHA])
    status = wait_offline_ready(clients, "e2e-offline")
    assert all(s.ready and s.pool_elements > 0 and s.prepared_s > 0 for s in status.values()), status
    first = run_to_end(clients["insurer"], "e2e-offline")
    assert first.state == common_pb2.RUN_STATE_SUCCEEDED, first
    for org in ("insurer", "hospital"):
        used = clients[org].offline_status("e2e-offline")
        assert used.last_run_id == first.run_id and used.last_run_prepared, (org, used)
    # The next run's material is made after the run; then the hospital's resharing server restarts.
    assert all(s.ready for s in wait_offline_ready(clients, "e2e-offline").values())
    mesh.restart(mesh.find("hospital", "resharing"))
    second = run_to_end(clients["insurer"], "e2e-offline")
    assert second.state == common_pb2.RUN_STATE_SUCCEEDED, second
    for org in ("insurer", "hospital"):
        used = clients[org].offline_status("e2e-offline")
        assert used.last_run_id == second.run_id and not used.last_run_prepared, (org, used)
    _, first_result = clients["insurer"].result(first.run_id)
    _, second_result = clients["insurer"].result(second.run_id)
    assert [c.feature for c in first_result.coefficients] == [c.feature for c in second_result.coefficients]
    assert np.allclose(
        [c.value for c in first_result.coefficients], [c.value for c in second_result.coefficients], atol=1e-6
    )
