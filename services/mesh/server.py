"""Server bootstrap shared by every riskmesh server.

`MeshServer` builds one grpc.aio server on the mTLS port with the OpenTelemetry,
authorisation and request-decoding (a message that does not parse → INVALID_ARGUMENT)
interceptors, the standard health service (also served alone on a plaintext port, for
Kubernetes probes, which cannot present a client certificate) and, when the config asks
for it (local development), reflection; it stops gracefully on SIGTERM/SIGINT. Its mTLS
credentials pick up rotated certificate files, and connections are recycled
(services.mesh.tls: max connection age) so the new ones take effect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.mesh.authz import AuthorizationInterceptor, RefusalHook, Rules
from services.mesh.config import OrgConfig
from services.mesh.decoding import RequestDecodingInterceptor
from services.mesh.tls import SERVER_OPTIONS, MeshCredentials

log = logging.getLogger("riskmesh.server")

GRACE_SECONDS = 5.0


class MeshServer:
    """One riskmesh server. Build it, `add_service(...)` each servicer, then start."""

    def __init__(
        self,
        config: OrgConfig,
        name: str,
        rules: Rules,
        on_refusal: RefusalHook | None = None,
        port: int | None = None,
        health_port: int | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.credentials = MeshCredentials.for_config(config, name)
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[
                aio_server_interceptor(),
                AuthorizationInterceptor(config, self.credentials.resolver, rules, on_refusal),
                RequestDecodingInterceptor(),
            ],
            options=SERVER_OPTIONS,
        )
        self.service_names: list[str] = []
        self._on_stop: list[Callable[[], None]] = []
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{config.bind_host}:{config.port(name) if port is None else port}"
        self.port = self.server.add_secure_port(address, self.credentials.server_credentials())
        if self.port == 0:
            raise OSError(f"could not bind the mTLS port of {name} at {address}")
        self.health_server = grpc.aio.server(options=SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        health_address = f"{config.bind_host}:{config.health_port(name) if health_port is None else health_port}"
        self.health_port = self.health_server.add_insecure_port(health_address)
        if self.health_port == 0:
            raise OSError(f"could not bind the health port of {name} at {health_address}")

    def add_service(
        self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, descriptor: ServiceDescriptor
    ) -> None:
        """Register a servicer, e.g.
        add_service(add_XServicer_to_server, XServicer(...), pb2.DESCRIPTOR.services_by_name["X"])."""
        add_to_server(servicer, self.server)
        self.service_names.append(descriptor.full_name)

    async def set_serving(self, serving: bool = True) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ["", *self.service_names]:
            await self.health.set(service, status)

    async def start(self, serving: bool = True) -> None:
        """Start both ports; `serving=False` keeps health NOT_SERVING until the caller is ready."""
        if self.config.reflection:
            reflection.enable_server_reflection(
                [
                    *self.service_names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                self.server,
            )
        await self.set_serving(False)
        await self.server.start()
        await self.health_server.start()
        if serving:
            await self.set_serving(True)
        log.info("%s of %s serving mTLS on %d, health on %d", self.name, self.config.org, self.port, self.health_port)

    def on_stop(self, release: Callable[[], None]) -> None:
        """Call `release` once the ports are closed (e.g. to stop worker processes)."""
        self._on_stop.append(release)

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.health_server.stop(0)
        for release in self._on_stop:
            release()

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT, then drain in-flight RPCs for a few seconds."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("%s of %s stopping", self.name, self.config.org)
        await self.stop()
