"""Ports the launcher reserves (services/tools/launcher.py): the server named in the
config binds them, nothing else does — not a second server, not a plain socket, not a
bind to port 0 — and a server started again gets the same ports back."""

from __future__ import annotations

import socket
import sys
from contextlib import closing

import pytest

from services.gateway.server import build_server
from services.mesh.config import load_config
from services.tools.launcher import DEFAULT_ROLES, local_mesh_for, reserve_port, wait_healthy
from tests.conftest import LoopThread

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="port reservations hold on Linux only (services/tools/launcher.py)"
)


@pytest.fixture(scope="module")
def own_configs(tmp_path_factory: pytest.TempPathFactory):
    return local_mesh_for(tmp_path_factory.mktemp("reserved"))


def _cannot_bind(port: int, option: int | None) -> bool:
    with closing(socket.socket()) as other:
        if option is not None:
            other.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            other.bind(("127.0.0.1", port))
            other.listen()
        except OSError:
            return True
    return False


def test_configs_name_every_server_on_its_reserved_ports(own_configs):
    configs = {org: load_config(path, env={}) for org, path in own_configs.items()}
    ports = [p for c in configs.values() for s in c.servers for p in (c.port(s), c.health_port(s))]
    assert len(set(ports)) == len(ports) == 2 * sum(len(c.servers) for c in configs.values())
    for org, config in configs.items():
        assert config.ports_cover_servers and config.role == DEFAULT_ROLES[org]
        for peer, other in configs.items():
            for server in other.servers:  # every org dials a server where that server listens
                assert config.endpoint(peer).address(server) == f"127.0.0.1:{other.port(server)}"


def test_the_configured_server_binds_its_reserved_ports_and_nothing_else_can(own_configs, loop_thread: LoopThread):
    config = load_config(own_configs["insurer"], env={})
    port = config.port("gateway")
    for _ in range(2):  # started, stopped, started again on the same ports
        server = loop_thread.run(build_server(config))
        try:
            assert (server.port, server.health_port) == (port, config.health_port("gateway"))
            loop_thread.run(server.start())
            wait_healthy(f"127.0.0.1:{config.health_port('gateway')}", timeout=10)
            with pytest.raises((RuntimeError, OSError), match="(?i)bind"):
                loop_thread.run(build_server(config))  # a second gateway while the first listens
            assert all(_cannot_bind(port, option) for option in (None, socket.SO_REUSEADDR, socket.SO_REUSEPORT))
        finally:
            loop_thread.run(server.stop(0))
        # While no server listens the reservation still keeps the port from sockets without
        # SO_REUSEADDR (what an outgoing connection's port would need); see the launcher.
        assert all(_cannot_bind(port, option) for option in (None, socket.SO_REUSEPORT))


def test_no_bind_to_port_zero_gets_a_reserved_port():
    reserved = {reserve_port() for _ in range(20)}
    taken = []
    try:
        for _ in range(3000):
            sock = socket.socket()
            taken.append(sock)
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] not in reserved
    finally:
        for sock in taken:
            sock.close()
