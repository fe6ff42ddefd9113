"""In-process gateways of three orgs over real mTLS: who gets in, who is refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.server import build_server
from services.mesh.config import load_config
from services.mesh.identity import Identity
from services.tools.pki import OrgPaths, issue_with_existing_ca, make_leaf, write_leaf
from tests.conftest import start_in_process, stop_in_process


@pytest.fixture(scope="module")
def gateways(loop_thread, mesh_configs):
    servers = start_in_process(loop_thread, mesh_configs, build_server)
    yield {org: load_config(path, env={}) for org, path in mesh_configs.items()}
    stop_in_process(loop_thread, servers)


def stub_as(
    config, pki_dir: Path, org: str, service: str, target_org: str | None = None
) -> gateway_pb2_grpc.GatewayServiceStub:
    """A stub to config's gateway presenting <pki_dir>/<org>/<service> credentials."""
    target = target_org or config.org
    root = OrgPaths(Path(config.pki_dir) / target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.ca_cert().read_bytes(),
        private_key=(Path(pki_dir) / org / f"{service}.key").read_bytes(),
        certificate_chain=(Path(pki_dir) / org / f"{service}.pem").read_bytes(),
    )
    channel = grpc.secure_channel(
        config.self_endpoint.address("gateway"),
        creds,
        options=[("grpc.ssl_target_name_override", f"gateway.{target}.riskmesh")],
    )
    return gateway_pb2_grpc.GatewayServiceStub(channel)


def test_own_client_gets_info(gateways):
    insurer = gateways["insurer"]
    with GatewayClient.from_pki(insurer.self_endpoint.address("gateway"), "insurer", insurer.pki_dir) as gw:
        info = gw.get_info()
    assert info.org == "insurer" and info.role == common_pb2.ROLE_DATA_OWNER
    assert info.caller_identity == "spiffe://insurer/client"


def test_cross_org_handshake_reaches_both_peers(gateways):
    insurer = gateways["insurer"]
    with GatewayClient.from_pki(insurer.self_endpoint.address("gateway"), "insurer", insurer.pki_dir) as gw:
        reply = gw.check_peers()
    assert {p.org: p.reachable for p in reply.peers} == {"hospital": True, "helper": True}
    assert {p.org: p.role for p in reply.peers} == {
        "hospital": common_pb2.ROLE_DATA_OWNER,
        "helper": common_pb2.ROLE_HELPER,
    }


def test_peer_gateway_may_get_info(gateways):
    insurer = gateways["insurer"]
    reply = stub_as(insurer, insurer.pki_dir, "hospital", "gateway").GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    assert reply.caller_identity == "spiffe://hospital/gateway"


def test_unauthenticated_without_client_certificate(gateways):
    insurer = gateways["insurer"]
    creds = grpc.ssl_channel_credentials(
        root_certificates=OrgPaths(Path(insurer.pki_dir) / "insurer").ca_cert().read_bytes()
    )
    channel = grpc.secure_channel(
        insurer.self_endpoint.address("gateway"),
        creds,
        options=[("grpc.ssl_target_name_override", "gateway.insurer.riskmesh")],
    )
    with pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayServiceStub(channel).GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    # The TLS handshake itself refuses a client without a certificate; gRPC reports it as UNAVAILABLE.
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unauthenticated_when_cert_claims_another_orgs_identity(gateways, tmp_path):
    """hospital's CA (trusted in the bundle) issues spiffe://insurer/client: not insurer's CA, so no identity."""
    insurer = gateways["insurer"]
    hospital_ca = OrgPaths(Path(insurer.pki_dir) / "hospital")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate(hospital_ca.ca_cert().read_bytes())
    ca_key = serialization.load_pem_private_key(hospital_ca.ca_key().read_bytes(), password=None)
    cert, key = make_leaf(Identity("insurer", "client"), ca_cert, ca_key)
    write_leaf(OrgPaths(tmp_path / "forged"), "client", cert, key)
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, tmp_path, "forged", "client", target_org="insurer").GetInfo(
            gateway_pb2.GetInfoRequest(), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_ca_refused(gateways, untrusted_pki):
    insurer = gateways["insurer"]
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, untrusted_pki, "insurer", "client").GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_refused(gateways, tmp_path):
    insurer = gateways["insurer"]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    issue_with_existing_ca(
        Path(insurer.pki_dir),
        "insurer",
        "client",
        tmp_path / "insurer",
        not_before=past - dt.timedelta(days=1),
        not_after=past,
    )
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, tmp_path, "insurer", "client").GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_permission_denied_for_wrong_service_of_own_org(gateways):
    insurer = gateways["insurer"]
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, insurer.pki_dir, "insurer", "lasso").GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_permission_denied_for_peer_gateway_on_client_rpc(gateways):
    insurer = gateways["insurer"]
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, insurer.pki_dir, "hospital", "gateway").CheckPeers(gateway_pb2.CheckPeersRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_permission_denied_for_another_orgs_client(gateways):
    insurer = gateways["insurer"]
    with pytest.raises(grpc.RpcError) as err:
        stub_as(insurer, insurer.pki_dir, "hospital", "client").GetInfo(gateway_pb2.GetInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_served_on_plaintext_port(gateways):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    insurer = gateways["insurer"]
    with grpc.insecure_channel(f"127.0.0.1:{insurer.health_port('gateway')}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="riskmesh.v1.GatewayService"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_mtls_port_refuses_plaintext(gateways):
    insurer = gateways["insurer"]
    with grpc.insecure_channel(insurer.self_endpoint.address("gateway")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            gateway_pb2_grpc.GatewayServiceStub(channel).GetInfo(gateway_pb2.GetInfoRequest(), timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
