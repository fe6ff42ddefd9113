"""Gateway server: opens this org's state (SQLite store + audit log), ends runs a restart
interrupted, and serves GatewayService."""

from __future__ import annotations

import grpc

from riskmesh.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.rules import GATEWAY_RULES
from services.gateway.servicer import GatewayServicer
from services.gateway.store import Store
from services.gateway.store_schema import store_path
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.mesh.process import run_server_process
from services.mesh.server import MeshServer
from services.study.policy import local_policy


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    local_policy(config)  # a malformed policy stops the gateway here, not at the first approval
    store = Store(store_path(config.state_dir))
    audit = store.audit  # in the same database: run changes and their rows commit together
    interrupted = store.fail_interrupted_runs(org=config.org, actor=f"spiffe://{config.org}/gateway")

    def audit_refusal(method: str, caller: Identity | None, code: grpc.StatusCode) -> None:
        audit.append(
            str(caller) if caller else "unidentified", "rpc.refused", details={"method": method, "code": code.name}
        )

    mesh = MeshServer(config, "gateway", GATEWAY_RULES, on_refusal=audit_refusal, port=port, health_port=health_port)
    servicer = GatewayServicer(config, mesh.credentials, store, audit)
    mesh.add_service(
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
        servicer,
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    )
    await servicer.runs.announce_interrupted(interrupted)
    return mesh


def main() -> int:
    return run_server_process("gateway", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
