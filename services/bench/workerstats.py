"""What each crypto worker did during a benchmark run (docs/adr/0011-crypto-workers.md).

`WorkerReading` takes, for every local crypto-worker process of the mesh, its CPU seconds
(the process and its descendants, as `cpu_s_by_org` counts them) and its own counters
(`GetWorkerStats`, asked with the org's `client` identity over mTLS: pool elements made,
ciphertexts decrypted, requests). `worker_figures` turns two readings into the bench JSON's
`cpu_s_by_worker`, `worker_items`, `worker_requests` and each worker's share of its
organisation's work (`worker_share_of_items`, `worker_share_of_cpu`), keyed
`<org>/crypto-worker-<i>`. These are counts and CPU time, independent of the machine's load;
wall-clock gains from more workers need free cores, which a shared 2-core machine does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from riskmesh.v1 import crypto_worker_pb2, crypto_worker_pb2_grpc
from services.bench.meshrun import _tree_cpu_s
from services.mesh.config import CRYPTO_WORKER, load_config
from services.mesh.tls import MeshCredentials
from services.tools.launcher import ServerProcess

STATS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerReading:
    cpu_s: dict[str, float]  # worker → CPU seconds so far
    items: dict[str, int]  # worker → pool elements + ciphertexts so far
    requests: dict[str, int]  # worker → requests served so far

    @classmethod
    def take(cls, processes: Iterable[ServerProcess], config_paths: Mapping[str, Path]) -> WorkerReading:
        cpu: dict[str, float] = {}
        items: dict[str, int] = {}
        requests: dict[str, int] = {}
        for proc in processes:
            if proc.worker_index is None:
                continue
            name = f"{proc.org}/{proc.server}"
            try:
                cpu[name] = _tree_cpu_s(psutil.Process(proc.process.pid))
            except psutil.Error:
                continue
            stats = _stats(config_paths[proc.org], proc.org, proc.worker_index)
            items[name] = stats.pool_elements + stats.ciphertexts_decrypted
            requests[name] = stats.pool_requests + stats.decrypt_requests
        return cls(cpu, items, requests)


def _stats(config_path: Path, org: str, index: int) -> crypto_worker_pb2.GetWorkerStatsResponse:
    config = load_config(config_path, env={})
    address = f"{config.bind_host}:{config.worker_ports(index).mtls}"
    with MeshCredentials(config.pki_dir, org, "client").sync_channel(org, CRYPTO_WORKER, address) as channel:
        stub = crypto_worker_pb2_grpc.CryptoWorkerServiceStub(channel)
        return stub.GetWorkerStats(crypto_worker_pb2.GetWorkerStatsRequest(), timeout=STATS_TIMEOUT_S)


def _share(values: Mapping[str, float]) -> dict[str, float]:
    """Each worker's fraction of its organisation's total (0 when the org did none)."""
    totals: dict[str, float] = {}
    for name, value in values.items():
        org = name.split("/", 1)[0]
        totals[org] = totals.get(org, 0.0) + value
    return {
        name: round(value / totals[name.split("/", 1)[0]], 3) if totals[name.split("/", 1)[0]] else 0.0
        for name, value in sorted(values.items())
    }


def worker_figures(before: WorkerReading, after: WorkerReading, crypto_workers: int) -> dict[str, object]:
    """The bench JSON's worker figures between two readings (module docstring)."""
    cpu = {n: round(max(0.0, s - before.cpu_s.get(n, 0.0)), 2) for n, s in sorted(after.cpu_s.items())}
    items = {n: v - before.items.get(n, 0) for n, v in sorted(after.items.items())}
    requests = {n: v - before.requests.get(n, 0) for n, v in sorted(after.requests.items())}
    return {
        "crypto_workers": crypto_workers,
        "cpu_s_by_worker": cpu,
        "worker_items": items,
        "worker_requests": requests,
        "worker_share_of_items": _share(items),
        "worker_share_of_cpu": _share(cpu),
    }
