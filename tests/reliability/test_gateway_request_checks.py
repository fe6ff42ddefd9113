"""Fast regression checks (in-process gateways over real mTLS) for what the reliability
suite found at the gateway: a request that does not parse is INVALID_ARGUMENT, progress
with unknown enum values is refused, and a refusal by the study's rules is audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.audit import AuditLog, audit_path
from services.gateway.server import build_server
from services.mesh.config import OrgConfig, load_config
from services.mesh.tls import MeshCredentials
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import local_mesh_for
from tests.conftest import LoopThread, start_in_process, stop_in_process

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


@pytest.fixture(scope="module")
def gateways(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OrgConfig]]:
    configs = local_mesh_for(tmp_path_factory.mktemp("request-checks"))
    servers = start_in_process(loop_thread, configs, build_server)
    yield {org: load_config(path, env={}) for org, path in configs.items()}
    stop_in_process(loop_thread, servers)


def channel(configs: dict[str, OrgConfig], org: str, as_org: str, service: str) -> grpc.Channel:
    return MeshCredentials(configs[as_org].pki_dir, as_org, service).sync_channel(
        org, "gateway", configs[org].self_endpoint.address("gateway")
    )


def undecodable(method: str, data: bytes) -> bool:
    try:
        message_factory.GetMessageClass(SERVICE.methods_by_name[method].input_type).FromString(data)
    except DecodeError:
        return True
    return False


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(method=st.sampled_from(sorted(m.name for m in SERVICE.methods)), data=st.data())
def test_a_request_that_does_not_parse_is_invalid_argument(
    gateways: dict[str, OrgConfig], method: str, data: st.DataObject
) -> None:
    payload = data.draw(st.binary(min_size=1, max_size=100).filter(lambda b: undecodable(method, b)))
    peer = method.startswith("Peer")
    with channel(gateways, "insurer", "hospital" if peer else "insurer", "gateway" if peer else "client") as ch:
        path = f"/riskmesh.v1.GatewayService/{method}"
        call = ch.unary_stream(path) if method == "WatchRun" else ch.unary_unary(path)
        with pytest.raises(grpc.RpcError) as err:
            reply = call(payload, timeout=10)
            list(reply) if method == "WatchRun" else reply
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "Traceback" not in err.value.details() and method in err.value.details()


@pytest.mark.parametrize("field", ["phase", "state", "error phase"])
def test_progress_with_an_unknown_enum_value_is_refused(gateways: dict[str, OrgConfig], field: str) -> None:
    request = gateway_pb2.PeerProgressRequest(progress=common_pb2.Progress(run_id="some-run", org="hospital"))
    if field == "phase":
        request.progress.phase = 99
    elif field == "state":
        request.progress.state = 42
    else:
        request.error.phase = 1234
    with channel(gateways, "insurer", "hospital", "gateway") as ch, pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayServiceStub(ch).PeerProgress(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_refusal_by_the_studys_rules_is_audited(gateways: dict[str, OrgConfig], tmp_path: Path) -> None:
    """The helper's client may call ProposeStudy (the table admits it) but the helper is no data owner."""
    spec = spec_for(make_study_data(20), "audited-refusal")
    with channel(gateways, "helper", "helper", "client") as ch, pytest.raises(grpc.RpcError) as err:
        gateway_pb2_grpc.GatewayServiceStub(ch).ProposeStudy(gateway_pb2.ProposeStudyRequest(spec=spec), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with AuditLog(audit_path(gateways["helper"].state_dir)) as audit:
        rows = [r for r in audit.rows() if r.action == "rpc.refused"]
    assert rows and rows[-1].actor == "spiffe://helper/client"
    assert (rows[-1].details["method"], rows[-1].details["code"]) == (
        "/riskmesh.v1.GatewayService/ProposeStudy",
        "PERMISSION_DENIED",
    )
