"""Load: several studies at once across the same three organisations — LOAD_RUNS runs of
LOAD_RECORDS rows per owner (half of them joined), each with its own data, started at
the same moment (alternately by the insurer and the hospital). Every run must succeed
at all three orgs with coefficients equal to scikit-learn's; the wall time (first
StartRun to last end) and the peak resident memory of the mesh's processes (servers and
their MPC workers and pools, sampled every 0.25 s) go into the summary."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from riskmesh.v1 import common_pb2
from services.reliability.ledger import Ledger
from services.testkit.studies import spec_for
from tests.reliability.harness import ALPHA, ORGS, KnownData, Mesh, check_coefficients, known_data

pytestmark = pytest.mark.e2e

LOAD_RUNS = 4
LOAD_RECORDS = 5000
LOAD_TIMEOUT_S = 400.0


class RssSampler:
    """Peak resident memory of every process of the mesh (and their children)."""

    def __init__(self, mesh: Mesh) -> None:
        assert mesh.local is not None
        self.roots = [psutil.Process(p.process.pid) for p in mesh.local.processes]
        self.peak_total = 0
        self.peak_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            total = 0
            for root in self.roots:
                try:
                    for proc in [root, *root.children(recursive=True)]:
                        rss = proc.memory_info().rss
                        total += rss
                        self.peak_process = max(self.peak_process, rss)
                except psutil.Error:
                    continue
            self.peak_total = max(self.peak_total, total)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_concurrent_studies_all_finish_correct(
    mesh: Mesh, reliability_root: Path, datasets: list[KnownData], ledger: Ledger
) -> None:
    loads = [known_data(reliability_root / "load" / str(k), LOAD_RECORDS, seed=100 + k) for k in range(LOAD_RUNS)]
    datasets += loads
    for k, data in enumerate(loads):
        mesh.approve(spec_for(data.data, f"load-{k}", alphas=[ALPHA]), data.sources)
    with RssSampler(mesh) as rss:
        started = time.monotonic()
        run_ids = [mesh.start_run(f"load-{k}", by=("insurer", "hospital")[k % 2]) for k in range(LOAD_RUNS)]
        ends: dict[str, float] = {}
        finals = {}
        for run_id in run_ids:
            finals[run_id] = mesh.wait_terminal(run_id, ORGS, LOAD_TIMEOUT_S - (time.monotonic() - started))
            ends[run_id] = time.monotonic() - started
        wall = time.monotonic() - started
    for k, run_id in enumerate(run_ids):
        states = {org: (common_pb2.RunState.Name(r.state), r.error.reason) for org, r in finals[run_id].items()}
        assert all(r.state == common_pb2.RUN_STATE_SUCCEEDED for r in finals[run_id].values()), f"load-{k}: {states}"
        assert finals[run_id]["insurer"].joined == LOAD_RECORDS // 2
        check_coefficients(loads[k].data, mesh.result("insurer", run_id))
        assert list(mesh.result("hospital", run_id).coefficients) == list(mesh.result("insurer", run_id).coefficients)
    ledger.note(
        "load",
        f"{LOAD_RUNS} concurrent runs × {LOAD_RECORDS} rows per owner ({LOAD_RECORDS // 2} joined, 6 features), "
        "all SUCCEEDED and equal to "
        f"scikit-learn; wall {wall:.0f} s (first StartRun to last end); "
        f"peak RSS of the mesh's processes {rss.peak_total / 2**20:.0f} MiB "
        f"(largest single process {rss.peak_process / 2**20:.0f} MiB)",
    )
