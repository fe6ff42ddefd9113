"""Gateway server: builds the servicer with its state and serves it."""

from __future__ import annotations

from riskmesh.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.rules import GATEWAY_RULES
from services.gateway.servicer import GatewayServicer
from services.mesh.config import OrgConfig
from services.mesh.process import run_server_process
from services.mesh.server import MeshServer


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    mesh = MeshServer(config, "gateway", GATEWAY_RULES, port=port, health_port=health_port)
    servicer = GatewayServicer(config, mesh.credentials)
    mesh.add_service(gateway_pb2_grpc.add_GatewayServiceServicer_to_server, servicer, gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"])
    return mesh


def main() -> int:
    return run_server_process("gateway", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
