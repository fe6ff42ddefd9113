"""Extraction through legitimate outputs, refused by the other organisations' own floors.

The insurer wants the hospital's values of chosen patients: it writes a spec with two
patients' worth of minimum intersection, one hospital feature and a tiny alpha (the
revealed slope and intercept then give both patients' values), or a reasonable minimum
with an alpha so small that the fit is unpenalised. It even sets its own local policy to
allow anything. The hospital and the helper keep the default floors
(max(100, 10·(d + 1)) joined rows, a minimum relative penalty) and refuse to approve;
without their approval nothing runs. Gateways only, in this process, over mTLS.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.audit import AuditLog, audit_path
from services.gateway.server import build_server
from services.mesh.config import OrgConfig, load_config, render_config
from services.mesh.tls import MeshCredentials
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import local_mesh_for
from tests.conftest import LoopThread, start_in_process, stop_in_process

ANYTHING_GOES = {"min_intersection": 1, "rows_per_parameter": 1, "min_relative_penalty": 0}


@pytest.fixture(scope="module")
def mesh(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    paths = local_mesh_for(tmp_path_factory.mktemp("extraction"), policies={"insurer": ANYTHING_GOES})
    servers = start_in_process(loop_thread, paths, build_server)
    configs = {org: load_config(p, env={}) for org, p in paths.items()}
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in configs.items()
    }
    yield clients, configs, paths, servers
    for client in clients.values():
        client.close()
    stop_in_process(loop_thread, servers)


def two_patient_spec(study_id: str) -> common_pb2.StudySpec:
    """Two patients, the hospital's BMI as the only feature, no penalty to speak of."""
    data = make_study_data(40)
    spec = spec_for(data, study_id, alphas=[1e-9], min_intersection=2)
    del spec.owners[0].features[:]
    del spec.owners[1].features[1:]
    return spec


def refusal(call) -> str:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
    return err.value.details()


def last_action(config: OrgConfig) -> str:
    with AuditLog(audit_path(config.state_dir)) as log:
        return log.rows()[-1].action


def test_extraction_two_patient_spec_is_refused_by_the_hospital_and_the_helper(mesh):
    clients, configs, _, _ = mesh
    study = clients["insurer"].propose(two_patient_spec("extract-two"), "/data/insurer.csv")
    # The approval screen shows the hospital why, floor by floor.
    checks = {c.name: c for c in clients["hospital"].get_study("extract-two").policy_checks}
    assert not checks["minimum intersection"].ok and checks["minimum intersection"].required == ">= 100"
    assert not checks["relative penalty"].ok and checks["features"].ok
    message = refusal(lambda: clients["hospital"].approve("extract-two", study.spec_digest, "/data/hospital.csv"))
    assert "minimum intersection 2 (local policy: >= 100)" in message and "relative penalty" in message
    assert last_action(configs["hospital"]) == "policy.refused"
    refusal(lambda: clients["helper"].approve("extract-two", study.spec_digest))
    assert clients["insurer"].get_study("extract-two").state == common_pb2.STUDY_STATE_PROPOSED
    refusal(lambda: clients["insurer"].start_run("extract-two"))


def test_extraction_tiny_alpha_interpolation_is_refused_even_with_enough_rows(mesh):
    clients, _, _, _ = mesh
    for kind, study_id in (
        (common_pb2.MODEL_KIND_LASSO, "extract-alpha"),
        (common_pb2.MODEL_KIND_RIDGE, "extract-ridge"),
    ):
        spec = spec_for(make_study_data(40), study_id, alphas=[1e-12], kind=kind, min_intersection=500)
        study = clients["insurer"].propose(spec, "/data/insurer.csv")
        digest = study.spec_digest
        message = refusal(lambda s=study_id, d=digest: clients["hospital"].approve(s, d, "/data/hospital.csv"))
        assert message.startswith("hospital's disclosure policy refuses approving this spec: relative penalty")
        assert "minimum intersection" not in message


def test_extraction_a_spec_within_the_floors_is_approved_and_the_screen_lists_who_learns_what(mesh):
    clients, _, _, _ = mesh
    spec = spec_for(make_study_data(40), "extract-fair", alphas=[0.3])
    study = clients["insurer"].propose(spec, "/data/insurer.csv")
    seen = clients["hospital"].approve("extract-fair", study.spec_digest, "/data/hospital.csv")
    assert all(c.ok for c in seen.policy_checks)
    told = {d.org: list(d.items) for d in seen.disclosures}
    assert set(told) == {"insurer", "hospital", "helper"} and "nothing of the model" in told["helper"]
    assert seen.governance.max_runs == 10 and seen.governance.runs_counted == 0


def test_extraction_floors_raised_after_approval_refuse_the_next_run(mesh, loop_thread):
    """The hospital tightens its policy after approving: its gateway refuses the insurer's run
    (sent straight to it, as a gateway skipping its own checks would)."""
    clients, configs, paths, servers = mesh
    spec = spec_for(make_study_data(40), "extract-raised", alphas=[0.3])
    study = clients["insurer"].propose(spec, "/data/insurer.csv")
    clients["hospital"].approve("extract-raised", study.spec_digest, "/data/hospital.csv")
    clients["helper"].approve("extract-raised", study.spec_digest)
    stricter = load_config(paths["hospital"], env={})
    paths["hospital"].write_text(
        render_config(OrgConfig(**{**stricter.__dict__, "policy": {"min_intersection": 5000}}))
    )
    loop_thread.run(servers["hospital"].stop(0))
    servers.update(start_in_process(loop_thread, {"hospital": paths["hospital"]}, build_server))
    insurer = configs["insurer"]
    channel = MeshCredentials(insurer.pki_dir, "insurer", "gateway").sync_channel(
        "hospital", "gateway", configs["hospital"].self_endpoint.address("gateway")
    )
    request = gateway_pb2.PeerStartRunRequest(
        run_id=f"extract-raised-{secrets.token_hex(6)}",
        study_id="extract-raised",
        spec_digest=study.spec_digest,
        input=gateway_pb2.InputCommitment(org="insurer", commitment=secrets.token_hex(32)),
    )
    with pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayServiceStub(channel).PeerStartRun(request, timeout=30)
    channel.close()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "minimum intersection" in err.value.details() and ">= 5000" in err.value.details()
    assert last_action(configs["hospital"]) == "policy.refused"


def test_the_cli_approval_screen_shows_the_floors_the_run_policy_and_who_learns_what(mesh):
    from typer.testing import CliRunner

    from services.cli.main import app

    clients, _, paths, _ = mesh
    clients["insurer"].propose(two_patient_spec("extract-screen"), "/data/insurer.csv")
    shown = CliRunner().invoke(
        app,
        [
            "study",
            "approve",
            "extract-screen",
            "--org",
            "hospital",
            "--config",
            str(paths["hospital"]),
            "--source",
            "/data/hospital.csv",
            "--yes",
        ],
    )
    assert shown.exit_code == 1 and "FAILED_PRECONDITION" in shown.output
    for text in (
        "your organisation's disclosure floors",
        "minimum intersection",
        "local policy: >=",
        "refused",
        "run policy",
        "at most 10 run(s)",
        "what each party receives or learns",
        "nothing of the model",
    ):
        assert text in shown.output, text
