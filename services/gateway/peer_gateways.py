"""Calls from this gateway to the other organisations' gateways.

A refusal or an outage at any peer fails the whole request with that peer's reason:
a proposal or approval is only stored here once every other party accepted it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.audit import clean_text
from services.gateway.errors import PhaseFailure, RequestError
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels

PEER_DEADLINE_S = 10.0
START_DEADLINE_S = 180.0  # a peer's setup includes Paillier key generation and reading its data
# A peer's refusal keeps its code; anything else (down, timed out, ...) is UNAVAILABLE here.
PASSED_ON_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)

PeerCall = Callable[[gateway_pb2_grpc.GatewayServiceStub], Awaitable[object]]


class PeerGateways:
    def __init__(self, config: OrgConfig, channels: Channels) -> None:
        self.config = config
        self.channels = channels

    def stub(self, org: str) -> gateway_pb2_grpc.GatewayServiceStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channels.get(org, "gateway"))

    def others(self, spec: common_pb2.StudySpec) -> list[str]:
        """The study's parties other than this organisation."""
        return [p.org for p in spec.parties if p.org != self.config.org]

    async def ready(self, org: str, timeout: float = PEER_DEADLINE_S) -> bool:
        """Wait, boundedly, until the channel to `org`'s gateway connects (`Channels.ready`: a peer
        gateway that was restarted is behind the channel's reconnect backoff for a moment)."""
        return await self.channels.ready(org, "gateway", timeout)

    async def call_all(self, orgs: list[str], call: PeerCall, what: str) -> None:
        """Call every peer at once; the first refusal or outage (in `orgs` order) raises."""
        await asyncio.gather(*(self.ready(org) for org in orgs))
        results = await asyncio.gather(*(call(self.stub(org)) for org in orgs), return_exceptions=True)
        for org, result in zip(orgs, results, strict=False):
            if isinstance(result, grpc.aio.AioRpcError):
                code = result.code() if result.code() in PASSED_ON_CODES else grpc.StatusCode.UNAVAILABLE
                raise RequestError(code, f"{what}: {org} answered {result.code().name}: {result.details()}")
            if isinstance(result, BaseException):
                raise result

    async def check_all(self) -> list[gateway_pb2.PeerStatus]:
        """Every configured peer gateway: reachable, answering as itself, and how fast."""
        return list(await asyncio.gather(*(self.check(org) for org in self.config.peers)))

    async def check(self, org: str) -> gateway_pb2.PeerStatus:
        address = self.config.endpoint(org).address("gateway")
        started = time.perf_counter()
        try:
            info = await self.stub(org).GetInfo(gateway_pb2.GetInfoRequest(), timeout=PEER_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=error)
        latency = (time.perf_counter() - started) * 1000
        if info.org != org:
            return gateway_pb2.PeerStatus(org=org, address=address, reachable=False, error=f"answered as {info.org!r}")
        return gateway_pb2.PeerStatus(org=org, address=address, reachable=True, role=info.role, latency_ms=latency)

    async def start_run(self, org: str, request: gateway_pb2.PeerStartRunRequest) -> gateway_pb2.PeerStartRunResponse:
        """Have `org` start its part of a run; a failure is a setup failure of the run."""
        if not await self.ready(org):
            reason = f"could not start the run there: its gateway did not answer within {PEER_DEADLINE_S:.0f} s"
            raise PhaseFailure(common_pb2.PHASE_SETUP, org, reason, reason) from None
        try:
            return await self.stub(org).PeerStartRun(request, timeout=START_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            # A peer's refusal names its category only (its gateway keeps the details).
            reason = f"could not start the run there: {exc.code().name}: {exc.details()}"
            raise PhaseFailure(common_pb2.PHASE_SETUP, org, reason, clean_text(reason)) from None

    async def announce_key(self, org: str, request: gateway_pb2.PeerAnnounceKeyRequest) -> None:
        """Announce this owner's next-run public key to the other owner (raises the peer's error)."""
        await self.ready(org)
        await self.stub(org).PeerAnnounceKey(request, timeout=PEER_DEADLINE_S)

    async def cancel_run(self, orgs: list[str], run_id: str, reason: str) -> None:
        """Best effort: a peer that does not hear of it ends the run when its own part fails."""
        request = gateway_pb2.PeerCancelRunRequest(run_id=run_id, reason=reason)
        await asyncio.gather(
            *(self.stub(org).PeerCancelRun(request, timeout=PEER_DEADLINE_S) for org in orgs), return_exceptions=True
        )
