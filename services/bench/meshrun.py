"""Three organisations on this machine for a benchmark: real server processes over mTLS,
every cross-organisation connection through a byte-counting relay, memory sampled.

Traffic. Every org dials every other org's servers through relays of its own
(services/tools/relay.py's `DelayRelay`, run on an event loop in a thread of the bench
process): org Y's processes get `RISKMESH_ADDR_<X>_<SERVER>` = the relay that forwards
to X's server, one relay per (caller org, peer org, server). A relay thus knows who
sent each byte: what it reads from the accepted connection was sent by the caller org,
what it reads from the target was sent by the peer org. `bytes_sent` counts TLS records
as they cross organisations (HTTP/2 frames, handshakes and keepalive pings included);
connections inside one org (gateway → own encryption, lasso → own resharing, the
lasso server → its MPC worker) are not counted. With `latency_ms > 0` each relay also
holds every chunk back by that one-way delay (the kernel here has no `netem`).

CPU. `cpu_seconds_by_org` reads the user + system CPU time of every server process, of
its live descendants and of its descendants that ended (the kernel adds a reaped child's
time to its parent's `children_*` figures: a run's MPC worker, once its lasso server has
waited for it). The difference of two readings is what each org used in between.

Memory. A thread samples, every `SAMPLE_S`, the resident set size of every server
process and of their descendants (the lasso servers' per-run MPC workers, the join
servers' pool workers; the family tree is refreshed every second), and keeps the peak
of each process and of each org's sum.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from services.mesh.config import MAX_UPLOAD_ROWS, ROLE_SERVERS, load_config
from services.tools.launcher import LocalMesh, OrgPlacement, ServerProcess, local_mesh_for
from services.tools.relay import Address, DelayRelay, parse_address

# Servers that other organisations call (docs/design.md, Security): gateway ↔ gateway,
# owner encryption → helper intersection, helper intersection → owner resharing,
# lasso ↔ lasso. The encryption server is only ever called by its own gateway.
CROSS_ORG_SERVERS = ("gateway", "intersection", "resharing", "lasso")
SAMPLE_S = 0.1
RESCAN_EVERY = 10  # samples between scans of the process table for new descendants
MIB = 1024 * 1024


class TrafficCounter:
    """Bytes each organisation sent to the others (updated on the relays' event loop)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    def add(self, org: str, count: int) -> None:
        self.sent[org] = self.sent.get(org, 0) + count

    def snapshot(self) -> dict[str, int]:
        return dict(self.sent)

    @staticmethod
    def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
        return {org: after[org] - before.get(org, 0) for org in after}


class _CountingReader:
    """A StreamReader whose reads are counted (only `read` is used by the relay)."""

    def __init__(self, reader: asyncio.StreamReader, count: Callable[[int], None]) -> None:
        self._reader = reader
        self._count = count

    async def read(self, n: int = -1) -> bytes:
        data = await self._reader.read(n)
        self._count(len(data))
        return data


class CountingRelay(DelayRelay):
    """A DelayRelay in front of `peer_org`'s server, used only by `caller_org`."""

    def __init__(
        self, listen: Address, target: Address, delay_s: float, caller_org: str, peer_org: str, counter: TrafficCounter
    ) -> None:
        super().__init__(listen, target, delay_s)
        self.caller_org = caller_org
        self.peer_org = peer_org
        self.counter = counter

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # Bytes from the caller are counted as they are read from the accepted socket; the
        # bytes the peer sends back are counted when written to it (the relay reads them
        # from its own connection to the target, which `_accept` opens itself).
        reader = _CountingReader(client_reader, lambda n: self.counter.add(self.caller_org, n))
        await super()._accept(reader, _CountingWriter(client_writer, lambda n: self.counter.add(self.peer_org, n)))  # type: ignore[arg-type]


class _CountingWriter:
    """A StreamWriter whose writes are counted; everything else is the writer's own."""

    def __init__(self, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
        self._writer = writer
        self._count = count

    def write(self, data: bytes) -> None:
        self._count(len(data))
        self._writer.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._writer, name)


class RelayThread:
    """An event loop in a daemon thread that runs the counting relays."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-relays", daemon=True)
        self.relays: list[CountingRelay] = []
        self.thread.start()

    def add(self, relay: CountingRelay) -> str:
        """Start `relay` on a free port (never one of the servers': the launcher holds
        those, services/tools/launcher.py); returns its `host:port`."""
        asyncio.run_coroutine_threadsafe(relay.start(), self.loop).result(30)
        self.relays.append(relay)
        return str(relay.listen_address)

    def stop(self) -> None:
        async def close_all() -> None:
            await asyncio.gather(*(r.close() for r in self.relays), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class MemoryPeaks:
    """Peak resident set sizes (bytes) since the last reset."""

    by_process: dict[str, int] = field(default_factory=dict)  # "<org>/<server>[/worker]" → peak
    by_org: dict[str, int] = field(default_factory=dict)  # peak of the sum over an org's processes

    def largest_process_mb(self) -> float:
        return round(max(self.by_process.values(), default=0) / MIB, 1)

    def org_mb(self) -> dict[str, float]:
        return {org: round(v / MIB, 1) for org, v in sorted(self.by_org.items())}

    def process_mb(self) -> dict[str, float]:
        """Peak per process name (a server's descendants share the name `<org>/<server>/child`)."""
        return {name: round(v / MIB, 1) for name, v in sorted(self.by_process.items())}


class Processes(Protocol):
    """Started server processes (a LocalMesh, or a benchmark's own party processes)."""

    processes: list[ServerProcess]

    def stop(self, timeout: float = 10.0) -> None: ...


Launch = Callable[[dict[str, Path], dict[str, OrgPlacement], float], Processes]


def launch_local_mesh(servers: tuple[str, ...] | None) -> Launch:
    """The default launcher: every server (or `servers`) of each org's role via LocalMesh."""

    def launch(config_paths: dict[str, Path], placements: dict[str, OrgPlacement], timeout: float) -> Processes:
        return LocalMesh(config_paths, only_servers=servers, placements=placements).start(timeout)

    return launch


class MemorySampler:
    """Samples the RSS of every server process and of their descendants in a thread.

    Reading one process's RSS is cheap (one /proc read); finding descendants means
    scanning every process on the machine, so the family tree is refreshed only every
    `rescan_every` samples (a per-run MPC worker lives for seconds; pool workers live
    as long as their server) — sampling must not steal CPU from the parties."""

    def __init__(self, mesh: Processes, interval_s: float = SAMPLE_S, rescan_every: int = RESCAN_EVERY) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.rescan_every = rescan_every
        self._peaks = MemoryPeaks()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._members: list[tuple[str, str, psutil.Process]] = []  # (org, name, handle)
        self._samples = 0

    def start(self) -> MemorySampler:
        self.rescan()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def reset(self) -> None:
        with self._lock:
            self._peaks = MemoryPeaks()

    def peaks(self) -> MemoryPeaks:
        self.sample()
        with self._lock:
            return MemoryPeaks(dict(self._peaks.by_process), dict(self._peaks.by_org))

    def rescan(self) -> None:
        """Find every server process's descendants (one pass over the process table)."""
        children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            children.setdefault(proc.info["ppid"], []).append(proc.pid)
        members: list[tuple[str, str, psutil.Process]] = []
        for server in list(self.mesh.processes):
            base = f"{server.org}/{server.server}"
            pending = [(server.process.pid, base)]
            while pending:
                pid, name = pending.pop()
                try:
                    members.append((server.org, name, psutil.Process(pid)))
                except psutil.Error:
                    continue
                pending += [(child, f"{base}/child") for child in children.get(pid, [])]
        with self._lock:
            self._members = members

    def sample(self) -> None:
        with self._lock:
            members = list(self._members)
        sizes: dict[str, int] = {}
        orgs: dict[str, int] = {}
        for org, name, handle in members:
            try:
                rss = handle.memory_info().rss
            except psutil.Error:
                continue  # a process that just ended
            sizes[name] = max(sizes.get(name, 0), rss)
            orgs[org] = orgs.get(org, 0) + rss
        with self._lock:
            for name, rss in sizes.items():
                self._peaks.by_process[name] = max(self._peaks.by_process.get(name, 0), rss)
            for org, total in orgs.items():
                self._peaks.by_org[org] = max(self._peaks.by_org.get(org, 0), total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._samples += 1
            if self._samples % self.rescan_every == 0:
                self.rescan()
            self.sample()


def _tree_cpu_s(root: psutil.Process) -> float:
    """CPU seconds of `root` and its descendants, live or ended (and reaped)."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # ended just now: its time moves to its parent once reaped
        total += times.user + times.system + times.children_user + times.children_system
    return total


def cpu_seconds_by_org(processes: Iterable[ServerProcess]) -> dict[str, float]:
    """org → CPU seconds used so far by its server processes and their descendants."""
    out: dict[str, float] = {}
    for server in processes:
        try:
            seconds = _tree_cpu_s(psutil.Process(server.process.pid))
        except psutil.Error:
            continue
        out[server.org] = out.get(server.org, 0.0) + seconds
    return out


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per org, CPU seconds between two `cpu_seconds_by_org` readings (rounded to 10 ms)."""
    return {org: round(max(0.0, seconds - before.get(org, 0.0)), 2) for org, seconds in sorted(after.items())}


def relay_env_var(org: str, server: str) -> str:
    return f"RISKMESH_ADDR_{org.upper().replace('-', '_')}_{server.upper().replace('-', '_')}"


class BenchMesh:
    """Three orgs' servers (`servers`, default all their role runs) as processes under
    `root`, cross-org traffic through counting relays, memory sampled. A context manager.

    `launch` starts the org processes with the relay addresses in each org's
    environment; by default LocalMesh (benchmarks with their own server entry points,
    like the lasso bench, pass their own and name the `servers` they run)."""

    def __init__(
        self,
        root: Path,
        latency_ms: float = 0.0,
        servers: tuple[str, ...] | None = None,
        launch: Launch | None = None,
        crypto_workers: int = 0,
        max_upload_rows: int = MAX_UPLOAD_ROWS,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency must be >= 0 ms")
        self.root = Path(root)
        self.latency_ms = latency_ms
        self.crypto_workers = crypto_workers  # local crypto-worker processes per data owner
        self.max_upload_rows = max_upload_rows  # the helper's cap on one owner's upload (above it for large runs)
        self.servers = servers
        self.launch = launch or launch_local_mesh(servers)
        self.config_paths: dict[str, Path] = {}
        self.counter = TrafficCounter()
        self.relays: RelayThread | None = None
        self.mesh: Processes | None = None
        self.sampler: MemorySampler | None = None
        self.started_at = 0.0
        self.ready_at = 0.0

    def _relay_env(self) -> dict[str, dict[str, str]]:
        """Start one relay per (caller org, peer org, cross-org server); org → its env."""
        assert self.relays is not None
        configs = {org: load_config(path, env={}) for org, path in self.config_paths.items()}
        env: dict[str, dict[str, str]] = {org: {} for org in configs}
        for caller in configs:
            for peer, peer_config in configs.items():
                if peer == caller:
                    continue
                for server in ROLE_SERVERS[peer_config.role]:
                    if server not in CROSS_ORG_SERVERS or (self.servers is not None and server not in self.servers):
                        continue
                    target = parse_address(peer_config.self_endpoint.address(server))
                    relay = CountingRelay(
                        Address(host="127.0.0.1"), target, self.latency_ms / 1000.0, caller, peer, self.counter
                    )
                    env[caller][relay_env_var(peer, server)] = self.relays.add(relay)
        return env

    def prepare(self) -> dict[str, Path]:
        """PKI and one config per org on ports reserved by this process (before any process starts)."""
        if not self.config_paths:
            self.config_paths = local_mesh_for(
                self.root, crypto_workers=self.crypto_workers, max_upload_rows=self.max_upload_rows
            )
        return self.config_paths

    def start(self, timeout: float = 120.0) -> BenchMesh:
        """Relays, then the org processes; returns once every server is healthy."""
        if self.mesh is not None or self.relays is not None:
            raise RuntimeError("this BenchMesh is already started")
        self.prepare()
        self.started_at = time.perf_counter()
        self.relays = RelayThread()
        try:
            env = self._relay_env()
            placements = {org: OrgPlacement(env=org_env) for org, org_env in env.items()}
            self.mesh = self.launch(self.config_paths, placements, timeout)
        except BaseException:
            self.relays.stop()
            raise
        self.sampler = MemorySampler(self.mesh).start()
        self.ready_at = time.perf_counter()
        return self

    @property
    def startup_s(self) -> float:
        """From starting the relays and processes until every server is healthy."""
        return self.ready_at - self.started_at

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.mesh is not None:
            self.mesh.stop()
            self.mesh = None
        if self.relays is not None:
            self.relays.stop()
            self.relays = None

    def __enter__(self) -> BenchMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
