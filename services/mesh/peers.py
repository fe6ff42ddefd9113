"""Channels from one server to other servers (own org or peers), created once and reused,
each with the OpenTelemetry client interceptors so trace context crosses organisations.

When this service's certificate files change on disk (rotation), new channels are made
with the new certificate; the old ones stay open for the RPCs still using them.

A server that was down (killed, or its pod restarted) is still behind the channel's
reconnect backoff for a moment after it is back (services/mesh/tls.py: up to 2 s), and a
call made then fails at once with the stale refusal. So before a call that starts a step
of a run, a caller waits for the channel to connect (`ready`), boundedly: a server that
stays down still fails the call, READY_WAIT_S later."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.mesh.config import OrgConfig
from services.mesh.tls import MeshCredentials

READY_WAIT_S = 5.0  # > the longest reconnect backoff (2 s + 20% jitter) after a server is back


async def await_ready(channel: grpc.aio.Channel, within: float = READY_WAIT_S) -> bool:
    """Wait until `channel` is connected, at most `within` s (module docstring); False if it is not."""
    try:
        await asyncio.wait_for(channel.channel_ready(), within)
        return True
    except TimeoutError:
        return False


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

    async def ready(self, org: str, server: str, within: float = READY_WAIT_S) -> bool:
        """`await_ready` on the channel to <org>'s <server>."""
        return await await_ready(self.get(org, server), within)

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close()
        self._channels.clear()
        self._retired.clear()
