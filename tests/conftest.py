"""Shared fixtures: a session-scoped dev PKI for three orgs plus an untrusted one, and
in-process mesh servers on an event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from services.mesh.config import OrgConfig, load_config
from services.mesh.server import MeshServer
from services.tools.launcher import local_mesh_for
from services.tools.pki import init_pki


@pytest.fixture(scope="session")
def mesh_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Config files (localhost ports reserved by this process, one dev PKI) for insurer, hospital, helper."""
    return local_mesh_for(tmp_path_factory.mktemp("mesh"))


@pytest.fixture(scope="session")
def untrusted_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PKI whose CAs nobody in the mesh trusts (same org names)."""
    out = tmp_path_factory.mktemp("untrusted-pki")
    init_pki(out)
    return out


class LoopThread:
    """An asyncio loop in a daemon thread: tests stay synchronous, servers run async."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def start_in_process(
    loop_thread: LoopThread, configs: dict[str, Path], build: Callable[[OrgConfig], Awaitable[MeshServer]]
) -> dict[str, MeshServer]:
    servers = {}
    for org, path in configs.items():
        config = load_config(path, env={})

        async def make(config: OrgConfig = config) -> MeshServer:
            server = await build(config)
            await server.start()
            return server

        servers[org] = loop_thread.run(make())
    return servers


def stop_in_process(loop_thread: LoopThread, servers: dict[str, MeshServer]) -> None:
    for server in servers.values():
        loop_thread.run(server.stop(0))
