"""When no crypto worker answers a decryption chunk, the resharing run fails with the
dispatcher's status and message (UNAVAILABLE, naming the crypto workers), not INTERNAL,
and keeps nothing (services/join/resharing_server.py, services/join/workers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from services.join.resharing_server import ResharingRun, ResharingServicer
from services.join.workers import CryptoWorkersUnavailable
from services.mesh.config import load_config
from services.tools.launcher import local_mesh_for


class Aborted(Exception):
    pass


class FakeContext:
    def cancelled(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_no_worker_answering_fails_the_run_unavailable_and_drops_it(tmp_path: Path) -> None:
    config = load_config(local_mesh_for(tmp_path / "mesh", crypto_workers=1)["insurer"], env={})
    servicer = ResharingServicer(config, threads=1)

    async def body() -> list[bytes]:
        raise CryptoWorkersUnavailable("crypto workers: no worker answered a chunk after 3 tries")

    async def main() -> ResharingRun:
        run = servicer._run("r1")
        with pytest.raises(Aborted) as err:
            await servicer._receive(run, FakeContext(), body())  # type: ignore[arg-type]
        assert err.value.args[0] == grpc.StatusCode.UNAVAILABLE
        assert err.value.args[1].startswith("resharing: crypto workers")
        return run

    run = asyncio.run(main())
    assert run.error is not None and run.error[0] == grpc.StatusCode.UNAVAILABLE
    assert run.key is None and run.blocks == [] and run.receiving == 0
