"""Channels from one server to other servers (own org or peers), created once and reused,
each with the OpenTelemetry client interceptors so trace context crosses organisations."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.mesh.config import OrgConfig
from services.mesh.tls import MeshCredentials


class Channels:
    def __init__(self, config: OrgConfig, credentials: MeshCredentials) -> None:
        self._config = config
        self._credentials = credentials
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def get(self, org: str, server: str) -> grpc.aio.Channel:
        key = (org, server)
        if key not in self._channels:
            address = self._config.endpoint(org).address(server)
            self._channels[key] = self._credentials.channel(org, server, address, interceptors=aio_client_interceptors())
        return self._channels[key]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
