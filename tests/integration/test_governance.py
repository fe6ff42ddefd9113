"""Run governance across three organisations, as a protocol-following data owner who wants
the other owner's data would try it: more runs than the policy allows, runs too close
together, a second run on an input with one patient removed (differencing), a chosen
input too small to hide anyone, and the same attempts sent straight to the peers by a
gateway that skips its own checks.

Each organisation runs its gateway and its join servers in this process over mTLS; there
is no lasso server, so a run that gets through the join ends FAILED when it reaches the
MPC. That is enough here: such a run was matched (it counts towards the quota and its
inputs were committed to), and no model exists to reveal. Local policies lower the
joined-count floor to 10 rows (the joins here are small; tests/integration/
test_extraction.py keeps the default floors).
"""

from __future__ import annotations

import csv
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway import server as gateway_server
from services.gateway.audit import AuditLog, AuditRow, audit_path
from services.join import encryption_server, intersection_server, resharing_server
from services.mesh.config import OrgConfig, load_config
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials
from services.testkit.studies import spec_for
from services.testkit.synthetic import StudyData, make_study_data
from services.tools.launcher import local_mesh_for
from tests.conftest import LoopThread

pytestmark = pytest.mark.timeout(300)

ORGS = ("insurer", "hospital", "helper")
LENIENT = {"min_intersection": 10, "rows_per_parameter": 1}
BUILDERS = {
    "gateway": gateway_server.build_server,
    "encryption": encryption_server.build_server,
    "intersection": intersection_server.build_server,
    "resharing": resharing_server.build_server,
}
SERVERS = {"insurer": ("encryption", "resharing", "gateway"), "hospital": ("encryption", "resharing", "gateway"),
           "helper": ("intersection", "resharing", "gateway")}  # fmt: skip


@dataclass
class Mesh:
    loop: LoopThread
    configs: dict[str, OrgConfig]
    data: StudyData
    sources: dict[str, str]
    root: Path
    servers: dict[tuple[str, str], MeshServer] = field(default_factory=dict)
    clients: dict[str, GatewayClient] = field(default_factory=dict)

    def start(self, org: str, server: str) -> None:
        async def make() -> MeshServer:
            built = await BUILDERS[server](self.configs[org])
            await built.start()
            return built

        self.servers[(org, server)] = self.loop.run(make())

    def restart_gateway(self, org: str) -> None:
        self.loop.run(self.servers.pop((org, "gateway")).stop(0))
        self.start(org, "gateway")

    def approve(self, spec: common_pb2.StudySpec, insurer_source: str | None = None) -> str:
        study = self.clients["insurer"].propose(spec, insurer_source or self.sources["insurer"])
        self.clients["hospital"].approve(spec.study_id, study.spec_digest, self.sources["hospital"])
        self.clients["helper"].approve(spec.study_id, study.spec_digest)
        return study.spec_digest

    def run_to_end(self, study_id: str, org: str = "insurer") -> gateway_pb2.Run:
        run = self.clients[org].start_run(study_id)
        final = run
        for event in self.clients[org].watch(run.run_id, timeout=180):
            final = event.run
        return final

    def audit(self, org: str) -> list[AuditRow]:
        with AuditLog(audit_path(self.configs[org].state_dir)) as log:
            return log.rows()

    def as_gateway_of(self, caller: str, target: str) -> gateway_pb2_grpc.GatewayServiceStub:
        """A stub to `target`'s gateway presenting `caller`'s gateway certificate: what a gateway
        that skips its own checks could send."""
        config = self.configs[caller]
        channel = MeshCredentials(config.pki_dir, caller, "gateway").sync_channel(
            target, "gateway", self.configs[target].self_endpoint.address("gateway")
        )
        return gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture(scope="module")
def mesh(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("governance")
    paths = local_mesh_for(root, policies={org: LENIENT for org in ORGS})
    configs = {org: load_config(path, env={}) for org, path in paths.items()}
    data = make_study_data(60, overlap=0.5)
    sources = {"insurer": str(data.insurer.write_csv(root / "insurer.csv")),
               "hospital": str(data.hospital.write_csv(root / "hospital.csv"))}  # fmt: skip
    built = Mesh(loop_thread, configs, data, sources, root)
    for org, servers in SERVERS.items():
        for server in servers:
            built.start(org, server)
    built.clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in configs.items()
    }
    yield built
    for client in built.clients.values():
        client.close()
    for server in built.servers.values():
        loop_thread.run(server.stop(0))


def spec(mesh: Mesh, study_id: str, **policy: int) -> common_pb2.StudySpec:
    return spec_for(mesh.data, study_id, min_intersection=10, run_policy=common_pb2.RunPolicy(**policy))


def refused(call) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
    return err.value


def without_first_patient(source: str, out: Path) -> str:
    """The same CSV with its first data row removed."""
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *rows[2:]])
    return str(out)


def peer_start(mesh: Mesh, study_id: str, digest: str, commitment: str) -> gateway_pb2.PeerStartRunRequest:
    return gateway_pb2.PeerStartRunRequest(
        run_id=f"{study_id}-{secrets.token_hex(6)}", study_id=study_id, spec_digest=digest,
        input=gateway_pb2.InputCommitment(org="insurer", commitment=commitment),
    )  # fmt: skip


def matched(run: gateway_pb2.Run) -> bool:
    """The run got through the join (it ends at the MPC, which this mesh does not run)."""
    return run.state == common_pb2.RUN_STATE_FAILED and run.error.phase >= common_pb2.PHASE_RESHARING


def test_quota_holds_across_gateway_restarts(mesh: Mesh):
    digest = mesh.approve(spec(mesh, "gov-quota", max_runs=2))
    for _ in range(2):
        assert matched(mesh.run_to_end("gov-quota"))
    error = refused(lambda: mesh.clients["insurer"].start_run("gov-quota"))
    assert "allows 2 run(s)" in error.details()
    assert mesh.audit("insurer")[-1].action == "run.refused"
    for org in ORGS:
        mesh.restart_gateway(org)
    refused(lambda: mesh.clients["insurer"].start_run("gov-quota"))
    assert mesh.clients["hospital"].get_study("gov-quota").governance.runs_counted == 2
    # A gateway that skips its own count is refused by the other owner and by the helper.
    for target in ("hospital", "helper"):
        stub = mesh.as_gateway_of("insurer", target)
        request = peer_start(mesh, "gov-quota", digest, secrets.token_hex(32))
        with pytest.raises(grpc.RpcError) as err:
            stub.PeerStartRun(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "allows 2 run(s)" in err.value.details()
        assert mesh.audit(target)[-1].action == "run.refused"


def test_min_interval_holds_across_restarts_and_at_every_party(mesh: Mesh):
    digest = mesh.approve(spec(mesh, "gov-interval", min_interval_seconds=3600))
    assert matched(mesh.run_to_end("gov-interval"))
    mesh.restart_gateway("insurer")
    assert "more before the next run" in refused(lambda: mesh.clients["insurer"].start_run("gov-interval")).details()
    stub = mesh.as_gateway_of("insurer", "hospital")
    with pytest.raises(grpc.RpcError) as err:
        stub.PeerStartRun(peer_start(mesh, "gov-interval", digest, secrets.token_hex(32)), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert mesh.clients["insurer"].get_study("gov-interval").governance.HasField("next_run_not_before")


def test_differencing_a_run_with_one_patient_removed_waits_for_the_other_owners_approval(mesh: Mesh):
    mesh.approve(spec(mesh, "gov-diff"))
    first = mesh.run_to_end("gov-diff")
    assert matched(first)
    # The same input again proceeds (within the quota, no approval needed).
    assert matched(mesh.run_to_end("gov-diff"))
    # The insurer removes one patient and runs again: the run stops in setup, unmatched.
    study = mesh.clients["insurer"].get_study("gov-diff")
    smaller = without_first_patient(mesh.sources["insurer"], mesh.root / "insurer-minus-one.csv")
    mesh.clients["insurer"].approve("gov-diff", study.spec_digest, smaller)
    waiting = mesh.run_to_end("gov-diff")
    assert waiting.state == common_pb2.RUN_STATE_FAILED and waiting.error.phase == common_pb2.PHASE_SETUP
    assert (
        "insurer's input changed since run" in waiting.error.reason
        and "hospital has not approved" in waiting.error.reason
    )
    # The hospital is told, with the commitment, and the change is in both audit logs.
    pending = list(mesh.clients["hospital"].get_study("gov-diff").governance.pending)
    assert len(pending) == 1 and pending[0].org == "insurer" and pending[0].changed
    changed = pending[0].commitment
    for org in ("insurer", "hospital"):
        asked = [r for r in mesh.audit(org) if r.action == "run.approval_requested" and r.study_id == "gov-diff"]
        assert asked and asked[-1].details["commitment"] == changed and asked[-1].details["changed"] is True
    assert mesh.clients["insurer"].get_study("gov-diff").governance.runs_counted == 2  # the waiting run did not count
    # Retrying without the approval is refused again.
    assert mesh.run_to_end("gov-diff").error.phase == common_pb2.PHASE_SETUP
    # The hospital approves the changed input; the next run proceeds and every party records it.
    approved = mesh.clients["hospital"].approve_run("gov-diff")
    assert not approved.governance.pending and approved.governance.grants[0].commitment == changed
    third = mesh.run_to_end("gov-diff")
    assert matched(third), third
    for org in ORGS:
        run = next(r for r in mesh.clients[org].list_runs("gov-diff") if r.run_id == third.run_id)
        inputs = {i.org: i for i in run.inputs}
        assert inputs["insurer"].commitment == changed and inputs["insurer"].changed
        assert inputs["hospital"].commitment and not inputs["hospital"].changed
        committed = [r for r in mesh.audit(org) if r.action == "run.input_committed" and r.run_id == third.run_id]
        assert {r.details["org"] for r in committed} == {"insurer", "hospital"}
    assert not mesh.clients["helper"].get_study("gov-diff").governance.grants  # the approval was used once


def test_differencing_a_gateway_skipping_its_own_check_is_refused_by_the_others(mesh: Mesh):
    digest = mesh.approve(spec(mesh, "gov-bypass"))
    assert matched(mesh.run_to_end("gov-bypass"))
    other_input = secrets.token_hex(32)  # a changed input, never approved
    for target in ("helper", "hospital"):
        with pytest.raises(grpc.RpcError) as err:
            mesh.as_gateway_of("insurer", target).PeerStartRun(
                peer_start(mesh, "gov-bypass", digest, other_input), timeout=30
            )
        assert (
            err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "input changed since run" in err.value.details()
        )
    pending = mesh.clients["hospital"].get_study("gov-bypass").governance.pending
    assert [p.commitment for p in pending] == [other_input]


def test_every_run_needs_the_other_owners_approval_when_the_policy_says_so(mesh: Mesh):
    mesh.approve(spec(mesh, "gov-every", run_approval=common_pb2.RUN_APPROVAL_EVERY_RUN))
    waiting = mesh.run_to_end("gov-every")
    assert (
        waiting.error.phase == common_pb2.PHASE_SETUP
        and "every run of this study needs hospital's approval" in waiting.error.reason
    )
    assert [p.org for p in mesh.clients["hospital"].get_study("gov-every").governance.pending] == ["insurer"]
    with pytest.raises(grpc.RpcError) as err:  # the insurer cannot approve its own runs
        mesh.clients["insurer"].approve_run("gov-every", org="insurer")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    mesh.clients["hospital"].approve_run("gov-every")
    assert matched(mesh.run_to_end("gov-every"))
    assert mesh.run_to_end("gov-every").error.phase == common_pb2.PHASE_SETUP  # the approval was for one run


def test_extraction_two_chosen_patients_reveal_only_that_the_join_is_too_small(mesh: Mesh):
    """The insurer's file holds two patients it knows the hospital treats (and others it does
    not share): the helper stops below the study's minimum and nobody learns more than that."""
    shared = set(mesh.data.hospital.canonical)
    keep = [i for i, cid in enumerate(mesh.data.insurer.canonical) if cid not in shared][:20]
    keep += [i for i, cid in enumerate(mesh.data.insurer.canonical) if cid in shared][:2]
    with open(mesh.sources["insurer"], newline="") as f:
        rows = list(csv.reader(f))
    path = mesh.root / "insurer-two-chosen.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([rows[0], *(rows[i + 1] for i in keep)])
    mesh.approve(spec(mesh, "gov-two-patients"), insurer_source=str(path))
    final = mesh.run_to_end("gov-two-patients")
    assert final.state == common_pb2.RUN_STATE_FAILED and final.error.phase == common_pb2.PHASE_INTERSECTION
    assert final.error.org == "helper" and "smaller than the study's minimum" in final.error.reason
    for org in ("insurer", "hospital"):  # only the fact: no count, at no party
        run = mesh.clients[org].list_runs("gov-two-patients")[0]
        assert run.joined == 0 and run.error.reason == "the intersection is smaller than the study's minimum"
    helper_run = mesh.clients["helper"].list_runs("gov-two-patients")[0]
    assert helper_run.error.reason.endswith("minimum of 10 patients")
    with pytest.raises(grpc.RpcError):
        mesh.clients["insurer"].result(final.run_id)
