"""The join with each data owner's crypto work on two crypto-worker processes (ADR 0011).

Every server and worker is its own process (LocalMesh with `crypto_workers = 2`): the join
matches the plaintext join with both workers of each owner sharing the work; with one of an
owner's workers killed (SIGKILL) the join still completes on the other; with all of them
killed the run fails UNAVAILABLE naming the crypto workers, and no shares are served.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.bench.drive import Harness, collect_shares, plaintext_join, reconstruct_table, run_join, same_rows
from services.bench.workerstats import WorkerReading
from services.mesh.config import CRYPTO_WORKER
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = pytest.mark.e2e

RECORDS = 400
SERVERS = ("encryption", "intersection", "resharing", CRYPTO_WORKER)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    configs = local_mesh_for(tmp_path_factory.mktemp("workers-e2e"), min_paillier_bits=1024, crypto_workers=2)
    with LocalMesh(configs, only_servers=SERVERS) as running:
        yield running


def join(mesh: LocalMesh, root: Path, run_id: str, seed: int) -> tuple[bool, int, str]:
    data = make_study_data(RECORDS, overlap=0.5, features=10, seed=seed)
    spec = spec_for(data, f"workers-e2e-{run_id}", min_intersection=10)
    spec.paillier_bits = 1024
    sources = {t.org: t.write_csv(root / f"{t.org}.csv") for t in (data.insurer, data.hospital)}
    harness = Harness(mesh.config_paths)

    async def run() -> tuple[bool, int, str]:
        try:
            timings = await run_join(harness, spec, {o: str(p) for o, p in sources.items()}, run_id)
            shares = await collect_shares(harness, spec, run_id)
        except grpc.aio.AioRpcError as exc:
            return False, 0, f"{exc.code().name}: {exc.details()}"
        finally:
            await harness.close()
        columns, expected = plaintext_join(data, sources)
        return same_rows(reconstruct_table(shares), columns, expected), timings.joined, ""

    return asyncio.run(run())


def test_both_workers_of_each_owner_share_a_join_that_matches_the_plaintext_join(mesh: LocalMesh, tmp_path: Path):
    before = WorkerReading.take(mesh.processes, mesh.config_paths)
    matches, joined, error = join(mesh, tmp_path, "both", seed=3)
    assert error == "" and matches and joined == RECORDS // 2
    after = WorkerReading.take(mesh.processes, mesh.config_paths)
    assert len(after.items) == 4  # two workers per owner, none at the helper
    for name, items in after.items.items():
        assert items - before.items.get(name, 0) > 0, name


def test_a_killed_worker_s_chunks_go_to_the_other_and_none_left_fails_unavailable(mesh: LocalMesh, tmp_path: Path):
    first = mesh.find("insurer", f"{CRYPTO_WORKER}-1")
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    matches, joined, error = join(mesh, tmp_path / "one", "one-left", seed=4)
    assert error == "" and matches and joined == RECORDS // 2
    second = mesh.find("insurer", f"{CRYPTO_WORKER}-0")
    os.kill(second.process.pid, signal.SIGKILL)
    second.process.wait(10)
    matches, _, error = join(mesh, tmp_path / "none", "none-left", seed=5)
    assert not matches
    assert error.startswith("UNAVAILABLE") and "crypto workers" in error, error
