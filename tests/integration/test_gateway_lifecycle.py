"""Study lifecycle across three in-process gateways over mTLS: proposals, approvals and
the refusals the issue names (runs need both owners' approval of the current spec;
the helper neither proposes nor reads results)."""

from __future__ import annotations

import grpc
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.gateway.audit import AuditLog, audit_path
from services.gateway.server import build_server
from services.mesh.config import load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from tests.conftest import start_in_process, stop_in_process


@pytest.fixture(scope="module")
def mesh(loop_thread, mesh_configs):
    servers = start_in_process(loop_thread, mesh_configs, build_server)
    configs = {org: load_config(path, env={}) for org, path in mesh_configs.items()}
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in configs.items()
    }
    yield clients, servers
    for c in clients.values():
        c.close()
    stop_in_process(loop_thread, servers)


@pytest.fixture(scope="module")
def data():
    return make_study_data(40)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_proposal_reaches_every_party_with_the_proposers_approval(mesh, data):
    clients, _ = mesh
    study = clients["insurer"].propose(spec_for(data, "lifecycle-one"), source_path="/data/insurer.csv")
    assert study.state == common_pb2.STUDY_STATE_PROPOSED and list(study.approved_by) == ["insurer"]
    for org in ("hospital", "helper"):
        seen = clients[org].get_study("lifecycle-one")
        assert (
            seen.spec_digest == study.spec_digest
            and seen.proposed_by == "insurer"
            and list(seen.approved_by) == ["insurer"]
        )


def test_run_before_both_approvals_is_refused(mesh, data):
    clients, _ = mesh
    clients["insurer"].propose(spec_for(data, "lifecycle-two"), source_path="/data/insurer.csv")
    assert code_of(lambda: clients["insurer"].start_run("lifecycle-two")) == grpc.StatusCode.FAILED_PRECONDITION
    digest = clients["hospital"].get_study("lifecycle-two").spec_digest
    clients["helper"].approve("lifecycle-two", digest)
    assert code_of(lambda: clients["insurer"].start_run("lifecycle-two")) == grpc.StatusCode.FAILED_PRECONDITION
    study = clients["hospital"].approve("lifecycle-two", digest, source_path="/data/hospital.csv")
    assert study.state == common_pb2.STUDY_STATE_APPROVED
    assert sorted(clients["insurer"].get_study("lifecycle-two").approved_by) == ["helper", "hospital", "insurer"]


def test_changed_spec_needs_new_approvals(mesh, data):
    clients, _ = mesh
    first = clients["insurer"].propose(spec_for(data, "lifecycle-three"), source_path="/data/insurer.csv")
    clients["helper"].approve("lifecycle-three", first.spec_digest)
    clients["hospital"].approve("lifecycle-three", first.spec_digest, source_path="/data/hospital.csv")
    changed = clients["insurer"].propose(spec_for(data, "lifecycle-three", alphas=[0.5]))
    assert changed.spec_digest != first.spec_digest and list(changed.approved_by) == ["insurer"]
    # An approval of the old digest is refused; the new one must be reviewed and approved.
    assert (
        code_of(lambda: clients["hospital"].approve("lifecycle-three", first.spec_digest, source_path="/d.csv"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code_of(lambda: clients["insurer"].start_run("lifecycle-three")) == grpc.StatusCode.FAILED_PRECONDITION


def test_helper_cannot_propose_or_start_or_read_results(mesh, data):
    clients, _ = mesh
    assert (
        code_of(lambda: clients["helper"].propose(spec_for(data, "lifecycle-four")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    clients["insurer"].propose(spec_for(data, "lifecycle-five"), source_path="/data/insurer.csv")
    assert code_of(lambda: clients["helper"].start_run("lifecycle-five")) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: clients["helper"].result("no-such-run")) == grpc.StatusCode.NOT_FOUND


def test_owner_approval_needs_a_local_source(mesh, data):
    clients, _ = mesh
    study = clients["insurer"].propose(spec_for(data, "lifecycle-six"), source_path="/data/insurer.csv")
    assert (
        code_of(lambda: clients["hospital"].approve("lifecycle-six", study.spec_digest))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_invalid_spec_is_refused_with_a_clear_message(mesh, data):
    clients, _ = mesh
    spec = spec_for(data, "lifecycle-seven")
    spec.model.alphas[:] = [-1.0]
    with pytest.raises(grpc.RpcError) as err:
        clients["insurer"].propose(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alpha" in err.value.details()


def test_audit_log_verifies_and_records_refusals(mesh, mesh_configs, data):
    clients, _ = mesh
    insurer = load_config(mesh_configs["insurer"], env={})
    # The hospital's client certificate is refused at insurer's gateway, and audited there.
    with GatewayClient.from_pki(insurer.self_endpoint.address("gateway"), "insurer", insurer.pki_dir) as own:
        own.get_info()
    foreign = GatewayClient(
        insurer.self_endpoint.address("gateway"),
        "insurer",
        (insurer.pki_dir / "hospital" / "client.pem").read_bytes(),
        (insurer.pki_dir / "hospital" / "client.key").read_bytes(),
        (insurer.pki_dir / "insurer" / "ca.pem").read_bytes(),
    )
    assert code_of(foreign.get_info) == grpc.StatusCode.PERMISSION_DENIED
    foreign.close()
    rows = AuditLog(audit_path(insurer.state_dir)).rows()
    refusals = [r for r in rows if r.action == "rpc.refused"]
    assert (
        refusals
        and refusals[-1].actor == "spiffe://hospital/client"
        and refusals[-1].details["code"] == "PERMISSION_DENIED"
    )
    assert {"study.proposed", "study.approved"} <= {r.action for r in rows}
    reply = clients["insurer"].verify_audit()
    assert reply.ok and reply.rows == len(rows)


def test_audit_rows_are_listed_for_the_org_and_its_console_only(mesh, mesh_configs, data):
    """ListAudit: the rows VerifyAudit checks, oldest first, paged; the org's console
    (spiffe://<org>/console) may read them and act on studies, but not Predict, and
    another org's console gets nothing."""
    clients, _ = mesh
    insurer = load_config(mesh_configs["insurer"], env={})
    rows = AuditLog(audit_path(insurer.state_dir)).rows()
    listed = clients["insurer"].list_audit()
    assert [r.seq for r in listed.records] == [r.seq for r in rows] and listed.last_seq == rows[-1].seq
    assert [(r.actor, r.action, r.hash, dict(r.details)) for r in listed.records] == [
        (r.actor, r.action, r.hash, {k: str(v) for k, v in r.details.items()}) for r in rows
    ]
    page = clients["insurer"].list_audit(after_seq=1, limit=2)
    assert [r.seq for r in page.records] == [2, 3]
    address, pki = insurer.self_endpoint.address("gateway"), insurer.pki_dir
    with GatewayClient.from_pki(address, "insurer", pki, identity="console") as console:
        assert console.get_info().caller_identity == "spiffe://insurer/console"
        assert console.list_audit(limit=1).records[0].seq == 1
        assert console.list_studies()
        assert code_of(lambda: console.predict("no-such-run", [{"x": 1.0}])) == grpc.StatusCode.PERMISSION_DENIED
    foreign = GatewayClient(
        address,
        "insurer",
        (pki / "hospital" / "console.pem").read_bytes(),
        (pki / "hospital" / "console.key").read_bytes(),
        (pki / "insurer" / "ca.pem").read_bytes(),
    )
    assert code_of(foreign.list_audit) == grpc.StatusCode.PERMISSION_DENIED
    foreign.close()


def test_gateway_restart_keeps_studies_and_approvals(loop_thread, mesh, mesh_configs, data):
    clients, servers = mesh
    clients["insurer"].propose(spec_for(data, "lifecycle-eight"), source_path="/data/insurer.csv")
    loop_thread.run(servers["hospital"].stop(0))
    servers.update(start_in_process(loop_thread, {"hospital": mesh_configs["hospital"]}, build_server))
    study = clients["hospital"].get_study("lifecycle-eight")
    assert list(study.approved_by) == ["insurer"]


def test_a_run_whose_setup_fails_ends_failed_and_has_no_result(mesh, data):
    # These gateways run without join or lasso servers: the starting owner's setup fails at
    # its own resharing server, and the run ends FAILED there, naming the phase, org and server.
    clients, _ = mesh
    study = clients["insurer"].propose(spec_for(data, "lifecycle-nine"), source_path="/data/insurer.csv")
    clients["helper"].approve("lifecycle-nine", study.spec_digest)
    clients["hospital"].approve("lifecycle-nine", study.spec_digest, source_path="/data/hospital.csv")
    run = clients["insurer"].start_run("lifecycle-nine")
    assert run.study_id == "lifecycle-nine" and run.started_by == "insurer" and len(run.trace_id) == 32
    last = list(clients["insurer"].watch(run.run_id, timeout=30))[-1].run
    assert last.state == common_pb2.RUN_STATE_FAILED
    assert (last.error.phase, last.error.org) == (
        common_pb2.PHASE_SETUP,
        "insurer",
    ) and "resharing" in last.error.reason
    assert code_of(lambda: clients["insurer"].cancel(run.run_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: clients["insurer"].result(run.run_id)) == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        code_of(lambda: clients["insurer"].predict(run.run_id, [{"age": 1.0}])) == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert [r.run_id for r in clients["insurer"].list_runs("lifecycle-nine")] == [run.run_id]
