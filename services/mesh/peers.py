"""Channels from one server to other servers (own org or peers), created once and reused,
each with the OpenTelemetry client interceptors so trace context crosses organisations.

When this service's certificate files change on disk (rotation), new channels are made
with the new certificate; the old ones stay open for the RPCs still using them."""

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
        self._retired: list[grpc.aio.Channel] = []
        self._generation = credentials.generation

    def get(self, org: str, server: str) -> grpc.aio.Channel:
        self._credentials.reload_if_changed()
        if self._credentials.generation != self._generation:
            self._generation = self._credentials.generation
            self._retired += self._channels.values()
            self._channels = {}
        key = (org, server)
        if key not in self._channels:
            address = self._config.endpoint(org).address(server)
            self._channels[key] = self._credentials.channel(
                org, server, address, interceptors=aio_client_interceptors()
            )
        return self._channels[key]

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close()
        self._channels.clear()
        self._retired.clear()
