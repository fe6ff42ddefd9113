"""Benchmark of the secure inner join: three organisations as separate processes over mTLS.

    python -m services.bench.join_bench --records 10000 --features 10

`bench_join` makes a temporary directory with its own dev PKI, configs on free localhost
ports and generated data (`records` rows per owner, the features split over the owners,
the insurer also holding the target, `overlap` of each owner's rows in the join), starts
the encryption, intersection and resharing servers of the three orgs as processes, drives
the join as the gateways would (services/bench/drive.py), reads every org's shares back,
compares their sum with the plaintext inner join and stops the servers. The last line
printed is one JSON object.

Before the timed run the harness has both owners make the run's key pairs and their pools
for the other owner's key, as their gateways do after an approval (drive.prepare_offline,
docs/adr/0013-offline-keys-and-pools.md): `prepared_s` is that wall time,
`prepared_cpu_s_by_org` its CPU, `prepared_pool_elements` the pool sizes, and
`used_prepared_keys` whether the run used the prepared keys and both owners' pools.

Times (seconds, wall clock, as the driving harness sees them; they add up to `total_s`):
`setup_s` key pairs (prepared ones: a lookup) + CSV validation + opening the helper's run; `offline_s` until both
owners have the randomness of their first piece (the rest is built while earlier pieces
upload, services/join/encryption_server.py); `join_s` the remaining pool pieces, tag,
encrypt, upload, match and mask; `reshare_s` masked rows
delivered and decrypted until every org stores its shares. `total_s` runs from the first
request until the shares are stored at all three orgs, offline work included (server
start-up is not: servers are long-lived).

Bytes are measured, not computed: the owners' encryption servers reach the helper's
intersection server through a byte-counting TCP relay in this process (each owner's
config addresses the helper's intersection at the relay, via
RISKMESH_ADDR_HELPER_INTERSECTION), so `bytes_to_helper` is every byte the owners sent
on those connections — TLS records carrying the HTTP/2 frames of UploadRows, handshakes
and keepalive pings included. Likewise `bytes_to_owners` counts what the helper's
intersection sent to the owners' resharing servers (DeliverMaskedRows).

CPU, to read the times on a shared machine: `server_cpu_s` is the CPU time the join
servers (and their pool worker processes) used during the run, `harness_cpu_s` this
process's (driving calls and relays), `other_cpu_s` what everything else on the machine
used meanwhile and `idle_cpu_s` the core-seconds nobody used (both from /proc/stat).
With `cores` cores the run cannot take less than server_cpu_s / cores; other_cpu_s says
how much of the machine others took, idle_cpu_s how much the join left unused.
`cpu_s_by_org` splits server_cpu_s by organisation (crypto workers included). With
`crypto_workers` N > 0 each owner runs N crypto-worker processes that make its pool and decrypt
its deliveries; `cpu_s_by_worker`, `worker_items`, `worker_requests`, `worker_share_of_items`
and `worker_share_of_cpu` say what each did (services/bench/workerstats.py).

Memory: `peak_rss_mb_by_org` is the peak of the summed resident set of each org's join
servers and their pool workers, `peak_rss_mb` the largest single process and
`peak_rss_mb_by_process` each server's (`<org>/<server>`) and the largest of its
descendants' (`…/child`: the pool workers and their fork server) — sampled every 0.1 s by
services/bench/meshrun.py's MemorySampler. RSS counts pages shared between a fork server
and its workers once per process, so the sums overstate what the org holds. `paillier_bits` is the key size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from services.bench.drive import (
    Harness,
    collect_shares,
    plaintext_join,
    prepare_offline,
    reconstruct_table,
    run_join,
    same_rows,
)
from services.bench.meshrun import MemorySampler, cpu_delta, cpu_seconds_by_org
from services.bench.workerstats import WorkerReading, worker_figures
from services.join.core.parallel import default_workers
from services.mesh.config import CRYPTO_WORKER, MAX_UPLOAD_ROWS, load_config
from services.study.spec import DEFAULT_PAILLIER_BITS
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import LocalMesh, local_mesh_for

JOIN_SERVERS = ("encryption", "intersection", "resharing", CRYPTO_WORKER)
READ_BYTES = 1 << 16


@dataclass
class CountingRelay:
    """Forwards every TCP connection it accepts to `target_host:target_port`, counting bytes."""

    target_host: str
    target_port: int
    sent_to_target: int = 0  # client → target: what the dialling servers sent
    sent_to_client: int = 0
    _server: asyncio.AbstractServer | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free port of `host`; returns the `host:port` to give the dialling servers."""
        self._server = await asyncio.start_server(self._accept, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"{host}:{port}"

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                target_reader, target_writer = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                client_writer.transport.abort()
                return
            await asyncio.gather(
                self._pump(client_reader, target_writer, True), self._pump(target_reader, client_writer, False)
            )
            for writer in (client_writer, target_writer):
                writer.transport.abort()
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_target: bool) -> None:
        try:
            while data := await reader.read(READ_BYTES):
                if to_target:
                    self.sent_to_target += len(data)
                else:
                    self.sent_to_client += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:  # a reset on either side: the other pump ends on its own read
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - _machine_idle_s(times)


def _machine_idle_s(times: Any = None) -> float:
    times = times or psutil.cpu_times()
    return times.idle + getattr(times, "iowait", 0.0)


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def _directory(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="riskmesh-join-bench-") as tmp:
        yield Path(tmp)


def bench_join(
    records: int,
    features: int = 10,
    overlap: float = 0.5,
    bits: int = DEFAULT_PAILLIER_BITS,
    workdir: Path | None = None,
    crypto_workers: int = 0,
) -> dict:
    """Run one join over three local orgs' processes and return its figures (see the module docstring)."""
    if records < 1 or not 0.0 <= overlap <= 1.0:
        raise ValueError("records must be positive and overlap in [0, 1]")
    with _directory(workdir) as root:
        # --bits 1024: a quick, test-only mesh; a helper cap above `records` (its ciphertexts spool to disk).
        configs = local_mesh_for(
            root / "mesh",
            min_paillier_bits=min(bits, 2048),
            max_upload_rows=max(records, MAX_UPLOAD_ROWS),
            crypto_workers=crypto_workers,
        )
        data = make_study_data(records, overlap=overlap, features=features)
        spec = spec_for(data, "join-bench")
        spec.paillier_bits = bits
        sources = {t.org: t.write_csv(root / "data" / f"{t.org}.csv") for t in (data.insurer, data.hospital)}
        result: dict[str, Any] = {
            "records": records,
            "features": features,
            "overlap": overlap,
            "paillier_bits": bits,
            "cores": default_workers(),
        }
        result.update(asyncio.run(_run(configs, spec, {o: str(p) for o, p in sources.items()}, crypto_workers)))
        # The oracle, only here: the plaintext inner join of the generated files.
        columns, expected = plaintext_join(data, sources)
        table = result.pop("_table")
        result["shares_match_plaintext"] = len(expected) == result["joined"] and same_rows(table, columns, expected)
        return result


async def _run(configs: dict[str, Path], spec: Any, sources: dict[str, str], crypto_workers: int = 0) -> dict[str, Any]:
    helper, owners = "helper", ("insurer", "hospital")
    endpoints = {org: load_config(path, env={}) for org, path in configs.items()}
    to_helper = CountingRelay(endpoints[helper].bind_host, endpoints[helper].port("intersection"))
    to_owner = {o: CountingRelay(endpoints[o].bind_host, endpoints[o].port("resharing")) for o in owners}
    env = {"RISKMESH_ADDR_HELPER_INTERSECTION": await to_helper.start()}
    for org, relay in to_owner.items():
        env[f"RISKMESH_ADDR_{org.upper()}_RESHARING"] = await relay.start()
    mesh = LocalMesh(configs, extra_env=env, only_servers=JOIN_SERVERS)
    try:
        await asyncio.to_thread(mesh.start, 120.0)
        harness = Harness(configs)
        sampler = MemorySampler(mesh).start()
        try:
            cpu_prepared, prepared_started = cpu_seconds_by_org(mesh.processes), time.perf_counter()
            prepared = await prepare_offline(harness, spec, sources)
            prepared_s = time.perf_counter() - prepared_started
            cpu_before, busy_before, idle_before, own_before = (
                cpu_seconds_by_org(mesh.processes),
                _machine_busy_s(),
                _machine_idle_s(),
                _own_cpu_s(),
            )
            cpu_prepared = cpu_delta(cpu_before, cpu_prepared)
            workers_before = await asyncio.to_thread(WorkerReading.take, mesh.processes, configs)
            timings = await run_join(harness, spec, sources, "bench-1", prepared)
            cpu_after, busy_after, idle_after, own_after = (
                cpu_seconds_by_org(mesh.processes),
                _machine_busy_s(),
                _machine_idle_s(),
                _own_cpu_s(),
            )
            peaks = sampler.peaks()
            workers_after = await asyncio.to_thread(WorkerReading.take, mesh.processes, configs)
            shares = await collect_shares(harness, spec, "bench-1")
        finally:
            sampler.stop()
            await harness.close()
    finally:
        await asyncio.to_thread(mesh.stop)
        for relay in (to_helper, *to_owner.values()):
            await relay.close()
    cpu_by_org = cpu_delta(cpu_after, cpu_before)
    server_cpu = sum(cpu_by_org.values())
    return {
        "joined": timings.joined,
        "setup_s": round(timings.setup_s, 3),
        "offline_s": round(timings.offline_s, 3),
        "join_s": round(timings.join_s, 3),
        "reshare_s": round(timings.reshare_s, 3),
        "total_s": round(timings.total_s, 3),
        "prepared_s": round(prepared_s, 3),
        "prepared_cpu_s_by_org": cpu_prepared,
        "prepared_pool_elements": {o: prepared[f"{o}/pool"].elements for o in owners},
        "used_prepared_keys": timings.offline_pools == len(owners),
        "bytes_to_helper": to_helper.sent_to_target,
        "bytes_to_owners": sum(r.sent_to_target for r in to_owner.values()),
        "server_cpu_s": round(server_cpu, 2),
        "cpu_s_by_org": cpu_by_org,
        **worker_figures(workers_before, workers_after, crypto_workers),
        "peak_rss_mb": peaks.largest_process_mb(),
        "peak_rss_mb_by_org": peaks.org_mb(),
        "peak_rss_mb_by_process": peaks.process_mb(),
        "harness_cpu_s": round(own_after - own_before, 2),
        "other_cpu_s": round(max(0.0, busy_after - busy_before - server_cpu - (own_after - own_before)), 2),
        "idle_cpu_s": round(idle_after - idle_before, 2),
        "_table": reconstruct_table(shares),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.join_bench",
        description="benchmark the secure inner join over three local orgs' processes (mTLS)",
    )
    parser.add_argument("--records", type=int, required=True, help="rows per data owner")
    parser.add_argument("--features", type=int, default=10, help="features, split over the owners (default 10: 5 each)")
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="share of each owner's rows in the join (default 0.5)"
    )
    parser.add_argument(
        "--bits",
        type=int,
        default=DEFAULT_PAILLIER_BITS,
        choices=(1024, 2048, 3072),
        help=f"Paillier modulus bits (default {DEFAULT_PAILLIER_BITS})",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep PKI, configs, data and server logs here (default: a temporary directory)"
    )
    parser.add_argument(
        "--crypto-workers",
        type=int,
        default=0,
        help="crypto-worker processes per owner (default 0: the servers' pools)",
    )
    args = parser.parse_args(argv)
    result = bench_join(args.records, args.features, args.overlap, args.bits, args.workdir, args.crypto_workers)
    print(json.dumps(result), flush=True)
    return 0 if result["shares_match_plaintext"] else 1


if __name__ == "__main__":
    sys.exit(main())
