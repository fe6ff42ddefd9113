"""Connection hygiene: certificates rotated on disk are served without a restart,
connections are recycled, and reflection is served only when the config asks for it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from riskmesh.v1 import join_pb2, join_pb2_grpc
from services.gateway.pipeline import PHASE_DEADLINE_S
from services.join import resharing_server
from services.mesh.config import OrgConfig, load_config
from services.mesh.peers import READY_WAIT_S, Channels
from services.mesh.pki_layout import OrgPaths
from services.mesh.server import MeshServer
from services.mesh.tls import RELOAD_CHECK_S, SERVER_OPTIONS, MeshCredentials
from services.tools.launcher import local_mesh_for
from services.tools.pki import issue_with_existing_ca
from tests.conftest import LoopThread


def served_serial(config: OrgConfig, server: str, client_pki: Path) -> int:
    """The serial number of the certificate a new TLS connection to `server` is given."""
    paths = OrgPaths(client_pki / config.org)
    context = ssl.create_default_context(cafile=str(paths.ca_cert()))
    context.check_hostname = False
    context.load_cert_chain(str(paths.cert("gateway")), str(paths.key("gateway")))
    context.set_alpn_protocols(["h2"])
    host, port = config.self_endpoint.address(server).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def resharing(loop_thread: LoopThread, tmp_path: Path) -> Iterator[tuple[OrgConfig, MeshServer]]:
    config = load_config(local_mesh_for(tmp_path)["insurer"], env={})

    async def start() -> MeshServer:
        server = await resharing_server.build_server(config)
        await server.start()
        return server

    server = loop_thread.run(start())
    yield config, server
    loop_thread.run(server.stop(0))


def test_a_rotated_certificate_is_served_on_the_next_connection_without_restart(
    resharing: tuple[OrgConfig, MeshServer], tmp_path: Path
) -> None:
    config, _ = resharing
    pki = config.pki_dir
    before = served_serial(config, "resharing", pki)
    issue_with_existing_ca(pki, "insurer", "resharing", pki / "insurer")  # rotation: same CA, new key and certificate
    time.sleep(RELOAD_CHECK_S + 0.2)
    after = served_serial(config, "resharing", pki)
    assert after != before
    assert (
        after == x509.load_pem_x509_certificate(OrgPaths(pki / "insurer").cert("resharing").read_bytes()).serial_number
    )
    # A replacement that does not check out (another CA's certificate) is not taken.
    other = tmp_path / "other-pki"
    from services.tools.pki import init_pki

    init_pki(other)
    for name in ("resharing.pem", "resharing.key"):
        (pki / "insurer" / name).write_bytes((other / "insurer" / name).read_bytes())
    time.sleep(RELOAD_CHECK_S + 0.2)
    assert served_serial(config, "resharing", pki) == after
    # The server still answers RPCs over mTLS on new connections.
    with MeshCredentials(pki, "insurer", "gateway").sync_channel(
        "insurer", "resharing", config.self_endpoint.address("resharing")
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)


def test_channels_are_remade_with_the_rotated_client_certificate(tmp_path: Path) -> None:
    config = load_config(local_mesh_for(tmp_path)["insurer"], env={})
    credentials = MeshCredentials.for_config(config, "gateway")

    async def rotate() -> None:  # aio channels belong to a running loop (whatever earlier tests left behind)
        channels = Channels(config, credentials)
        first = channels.get("hospital", "gateway")
        assert channels.get("hospital", "gateway") is first
        issue_with_existing_ca(config.pki_dir, "insurer", "gateway", config.pki_dir / "insurer")
        await asyncio.sleep(RELOAD_CHECK_S + 0.2)
        second = channels.get("hospital", "gateway")
        assert second is not first and credentials.generation == 1
        await channels.close()

    asyncio.run(rotate())
    assert credentials.cert_pem == OrgPaths(config.pki_dir / "insurer").cert("gateway").read_bytes()


def test_a_server_back_from_a_restart_is_waited_for_past_the_reconnect_backoff(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """A gateway's channel to its own resharing server while that server is down: calls fail
    and the channel backs off (up to 2 s); a bounded wait gives up while it stays down, and
    once it is back, `Channels.ready` returns as soon as the channel connects, then calls work."""
    config = load_config(local_mesh_for(tmp_path)["insurer"], env={})
    drop = join_pb2.DropRunRequest(run_id="no-such-run")

    async def scenario() -> float:
        channels = Channels(config, MeshCredentials.for_config(config, "gateway"))
        stub = join_pb2_grpc.ResharingServiceStub(channels.get("insurer", "resharing"))
        for _ in range(6):  # down: each call fails, and the backoff grows
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DropRun(drop, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.3)
        assert not await channels.ready("insurer", "resharing", within=0.2)
        server = await resharing_server.build_server(config)
        await server.start()
        try:
            started = time.monotonic()
            assert await channels.ready("insurer", "resharing")
            waited = time.monotonic() - started
            await stub.DropRun(drop, timeout=5)
        finally:
            await server.stop(0)
            await channels.close()
        return waited

    assert loop_thread.run(scenario()) < READY_WAIT_S


def test_connections_are_recycled_and_rpcs_in_flight_may_finish() -> None:
    options = dict(SERVER_OPTIONS)
    assert options["grpc.max_connection_age_ms"] <= 15 * 60 * 1000
    assert options["grpc.max_connection_age_grace_ms"] > PHASE_DEADLINE_S * 1000  # no pipeline RPC is cut


def list_services(config: OrgConfig) -> list[str]:
    credentials = MeshCredentials.for_config(config, "gateway")
    with credentials.sync_channel(config.org, "resharing", config.self_endpoint.address("resharing")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        return [service.name for reply in replies for service in reply.list_services_response.service]


def test_reflection_is_served_only_when_the_config_enables_it(loop_thread: LoopThread, tmp_path: Path) -> None:
    path = local_mesh_for(tmp_path)["insurer"]
    for enabled in (True, False):
        text = path.read_text().replace("reflection = true", f"reflection = {str(enabled).lower()}")
        path.write_text(text)
        config = load_config(path, env={})
        assert config.reflection is enabled

        async def start(config: OrgConfig = config) -> MeshServer:
            server = await resharing_server.build_server(config)
            await server.start()
            return server

        server = loop_thread.run(start())
        try:
            if enabled:
                assert "riskmesh.v1.ResharingService" in list_services(config)
            else:
                with pytest.raises(grpc.RpcError) as err:
                    list_services(config)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            loop_thread.run(server.stop(0))
