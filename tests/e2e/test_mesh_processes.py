"""Three organisations as real processes over mTLS on localhost."""

from __future__ import annotations

import pytest

from riskmesh.client import GatewayClient
from services.mesh.config import load_config
from services.mesh.telemetry import read_spans
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def running_mesh(tmp_path_factory):
    configs = local_mesh_for(tmp_path_factory.mktemp("e2e-mesh"))
    mesh = LocalMesh(configs).start()
    yield configs, mesh
    mesh.stop()


def test_every_server_of_every_org_is_healthy(running_mesh):
    configs, mesh = running_mesh
    started = {(p.org, p.server) for p in mesh.processes}
    expected = {(org, s) for org, path in configs.items() for s in load_config(path, env={}).servers}
    assert len(expected) == 12 and started == expected
    assert all(p.process.poll() is None for p in mesh.processes)


def test_one_request_crossing_three_orgs_is_one_trace(running_mesh):
    configs, mesh = running_mesh
    insurer = load_config(configs["insurer"], env={})
    with GatewayClient.from_pki(insurer.self_endpoint.address("gateway"), "insurer", insurer.pki_dir) as gw:
        reply = gw.check_peers()
    assert all(p.reachable for p in reply.peers), reply
    # Stop the gateways so their span exporters flush, then read every org's spans.
    mesh.stop()
    spans = read_spans(
        [load_config(p, env={}).state_dir / "spans" / f"{org}-gateway.jsonl" for org, p in configs.items()]
    )
    check = [s for s in spans if s["name"].endswith("/CheckPeers")]
    assert len(check) == 1
    trace_id = check[0]["context"]["trace_id"]
    orgs_in_trace = {s["resource"]["attributes"]["riskmesh.org"] for s in spans if s["context"]["trace_id"] == trace_id}
    assert orgs_in_trace == {"insurer", "hospital", "helper"}
