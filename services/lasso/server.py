"""Lasso server: one MPyC party per organisation (`python -m services.lasso.server --config f`).

Production wiring: input shares from this org's ResharingService.GetShares (as the
lasso identity, over mTLS), MPC traffic on Exchange streams to the other lasso servers,
one MPC worker process per run, started ahead of it (services.lasso.worker.handle). Tests
and benchmarks inject another share source or program through the keyword arguments.
"""

from __future__ import annotations

import functools

import grpc

from riskmesh.v1 import lasso_pb2, lasso_pb2_grpc
from services.lasso.rules import LASSO_RULES
from services.lasso.servicer import LassoServicer
from services.lasso.shares import GrpcShareSource, ShareSource
from services.lasso.worker.handle import ForkedWorker, fork_worker
from services.lasso.worker.lasso_program import run as _production_program  # noqa: F401  (see below)
from services.lasso.worker.main import main as _worker_main  # noqa: F401  (see below)
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.process import run_server_process
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials


class LassoChannels:
    """One channel per peer lasso server, reused by every run. No client interceptors:
    a stream's trace context is injected into its metadata by the run (see runs.py)."""

    def __init__(self, config: OrgConfig, credentials: MeshCredentials) -> None:
        self._config = config
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._generation = credentials.generation

    def __call__(self, org: str) -> grpc.aio.Channel:
        self._credentials.reload_if_changed()
        if self._credentials.generation != self._generation:  # rotated: new channels, old ones left to their streams
            self._generation = self._credentials.generation
            self._channels = {}
        if org not in self._channels:
            address = self._config.endpoint(org).address("lasso")
            self._channels[org] = self._credentials.channel(org, "lasso", address)
        return self._channels[org]


async def build_server(
    config: OrgConfig,
    port: int | None = None,
    health_port: int | None = None,
    *,
    shares: ShareSource | None = None,
    program: str = "lasso",
    forked: ForkedWorker | None = None,
) -> MeshServer:
    mesh = MeshServer(config, "lasso", LASSO_RULES, port=port, health_port=health_port)
    if shares is None:
        shares = GrpcShareSource(Channels(config, mesh.credentials).get(config.org, "resharing"))
    servicer = LassoServicer(config.org, shares, LassoChannels(config, mesh.credentials), program=program)
    mesh.add_service(
        lasso_pb2_grpc.add_LassoServiceServicer_to_server,
        servicer,
        lasso_pb2.DESCRIPTOR.services_by_name["LassoService"],
    )
    servicer.start_workers(forked)
    mesh.on_stop(servicer.stop_workers)
    return mesh


def main() -> int:
    # The first run's MPC worker is forked now, while this process runs no gRPC and no threads
    # yet: it shares the modules imported here instead of importing them again (handle.fork_worker).
    # That is why this module imports the worker's main and the production program, which the
    # server itself never calls (a launcher's fork server that preloads this module, ADR 0016,
    # then imports them once for every lasso server it forks).
    forked = fork_worker("lasso")
    return run_server_process("lasso", functools.partial(build_server, forked=forked))


if __name__ == "__main__":
    raise SystemExit(main())
