"""GatewayService: a thin adapter between gRPC and the gateway's state and orchestration."""

from __future__ import annotations

import asyncio
import time

import grpc

import riskmesh
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.mesh.authz import current_caller
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.tls import MeshCredentials

ROLE_TO_PROTO = {"data_owner": common_pb2.ROLE_DATA_OWNER, "helper": common_pb2.ROLE_HELPER}
PEER_DEADLINE_S = 5.0


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, config: OrgConfig, credentials: MeshCredentials) -> None:
        self.config = config
        self.channels = Channels(config, credentials)

    async def GetInfo(self, request: gateway_pb2.GetInfoRequest, context: grpc.aio.ServicerContext) -> gateway_pb2.GetInfoResponse:
        caller = current_caller.get()
        return gateway_pb2.GetInfoResponse(
            org=self.config.org, role=ROLE_TO_PROTO[self.config.role], version=riskmesh.__version__, caller_identity=str(caller) if caller else ""
        )

    async def CheckPeers(self, request: gateway_pb2.CheckPeersRequest, context: grpc.aio.ServicerContext) -> gateway_pb2.CheckPeersResponse:
        statuses = await asyncio.gather(*(self._check_peer(org) for org in self.config.peers))
        return gateway_pb2.CheckPeersResponse(org=self.config.org, peers=statuses)

    async def _check_peer(self, org: str) -> gateway_pb2.PeerStatus:
        address = self.config.endpoint(org).address("gateway")
        stub = gateway_pb2_grpc.GatewayServiceStub(self.channels.get(org, "gateway"))
        started = time.perf_counter()
        try:
            info = await stub.GetInfo(gateway_pb2.GetInfoRequest(), timeout=PEER_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=f"{exc.code().name}: {exc.details()}")
        latency = (time.perf_counter() - started) * 1000
        if info.org != org:
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=f"answered as {info.org!r}")
        return gateway_pb2.PeerStatus(org=org, address=address, reachable=True, role=info.role, latency_ms=latency)
