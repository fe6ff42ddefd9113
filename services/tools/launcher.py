"""Start one organisation, or all three, on this machine as separate server processes.

`write_local_mesh` writes a config per org (localhost, distinct port ranges, one dev
PKI); `LocalMesh` starts every server of each org as its own process, waits until each
answers SERVING on its plaintext health port, and stops them with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.mesh.config import HEALTH_OFFSET, MIN_PAILLIER_BITS, ROLE_SERVERS, SERVER_OFFSETS, OrgConfig, OrgEndpoint, load_config, render_config
from services.tools.pki import DEFAULT_ORGS, ca_fingerprints, init_pki

SERVER_MODULES = {
    "gateway": "services.gateway.server",
    "encryption": "services.join.encryption_server",
    "intersection": "services.join.intersection_server",
    "resharing": "services.join.resharing_server",
    "lasso": "services.lasso.server",
}
DEFAULT_ROLES = {"insurer": "data_owner", "hospital": "data_owner", "helper": "helper"}
DEFAULT_BASE_PORTS = {"insurer": 7100, "hospital": 7200, "helper": 7300}

# Three parties share few cores: keep numerical libraries single-threaded in every server.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def ports_free(base_port: int, host: str = "127.0.0.1") -> bool:
    for offset in [*SERVER_OFFSETS.values(), *(HEALTH_OFFSET + o for o in SERVER_OFFSETS.values())]:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind((host, base_port + offset))
            except OSError:
                return False
    return True


def find_free_base_ports(count: int, start: int = 20000, host: str = "127.0.0.1") -> list[int]:
    """`count` base ports whose 20-port ranges are all free (for tests and benchmarks)."""
    found: list[int] = []
    base = start + (os.getpid() % 400) * 100
    while len(found) < count:
        if base > 60000:
            base = start
        if ports_free(base, host):
            found.append(base)
        base += 100
    return found


def write_local_mesh(root: Path, base_ports: dict[str, int] | None = None, host: str = "127.0.0.1", pki_dir: Path | None = None, min_paillier_bits: int = MIN_PAILLIER_BITS) -> dict[str, Path]:
    """PKI + one config file per org under root; returns org → config path.

    `min_paillier_bits` below 2048 only for test meshes that use fast 1024-bit keys."""
    root = Path(root).resolve()
    base_ports = base_ports or DEFAULT_BASE_PORTS
    pki_dir = Path(pki_dir or root / "pki").resolve()
    init_pki(pki_dir, tuple(base_ports))
    pins = ca_fingerprints(pki_dir, tuple(base_ports))  # each config pins every org's CA
    paths = {}
    for org, base in base_ports.items():
        peers = {o: OrgEndpoint(o, DEFAULT_ROLES[o], host, b, ca_sha256=pins[o]) for o, b in base_ports.items() if o != org}
        config = OrgConfig(org, DEFAULT_ROLES[org], host, base, pki_dir, root / org / "state", {}, peers, ca_sha256=pins[org], min_paillier_bits=min_paillier_bits, reflection=True)
        path = root / org / "riskmesh.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_config(config))
        paths[org] = path
    return paths


def wait_healthy(address: str, timeout: float) -> None:
    """Block until the plaintext health port at `address` answers SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SERVING health answer from {address} within {timeout:.0f} s")
            time.sleep(0.1)


@dataclass
class ServerProcess:
    org: str
    server: str
    process: subprocess.Popen
    log_path: Path
    health_address: str


def stop_processes(processes: list[ServerProcess], timeout: float = 10.0) -> None:
    """SIGTERM every server (they drain gracefully), then SIGKILL what is left at the deadline."""
    for proc in processes:
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


@dataclass(frozen=True)
class OrgPlacement:
    """Where one org's servers run when not straight on this host, e.g. in their own
    network namespace (services/tools/netns.py): a command prefix such as
    `ip netns exec <ns>`, extra environment for that org only, and the address at which
    this launcher reaches each server's health port (server → address)."""

    command_prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    health_addresses: Mapping[str, str] = field(default_factory=dict)  # default: bind_host:health port


@dataclass
class LocalMesh:
    """Processes of one or more orgs; use as a context manager."""

    config_paths: dict[str, Path]
    extra_env: dict[str, str] = field(default_factory=dict)
    only_servers: tuple[str, ...] | None = None  # default: every server the org's role runs
    processes: list[ServerProcess] = field(default_factory=list)
    placements: dict[str, OrgPlacement] = field(default_factory=dict)  # org → placement; default: this host

    def start(self, timeout: float = 60.0) -> "LocalMesh":
        for org, path in self.config_paths.items():
            config = load_config(path, env={})
            log_dir = config.state_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            for server in ROLE_SERVERS[config.role]:
                if self.only_servers is not None and server not in self.only_servers:
                    continue
                self.processes.append(self._spawn(org, server, path, config, log_dir))
        try:
            for proc in self.processes:
                self._wait(proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, org: str, server: str, path: Path, config: OrgConfig, log_dir: Path) -> ServerProcess:
        placement = self.placements.get(org, OrgPlacement())
        env = {**os.environ, **SINGLE_THREAD_ENV, **self.extra_env, **placement.env, "RISKMESH_CONFIG": str(path)}
        command = [*placement.command_prefix, sys.executable, "-m", SERVER_MODULES[server], "--config", str(path)]
        log_path = log_dir / f"{server}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        health = placement.health_addresses.get(server, f"{config.bind_host}:{config.health_port(server)}")
        return ServerProcess(org, server, process, log_path, health)

    def _wait(self, proc: ServerProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.process.poll() is not None:
                tail = proc.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{proc.server} of {proc.org} exited with {proc.process.returncode}:\n{tail}")
            try:
                wait_healthy(proc.health_address, timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{proc.server} of {proc.org} not healthy within {timeout:.0f} s (log: {proc.log_path})") from None

    def restart(self, proc: ServerProcess, timeout: float = 60.0) -> ServerProcess:
        """Stop one server (if still running) and start it again with the same config."""
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
            proc.process.wait(timeout)
        path = self.config_paths[proc.org]
        config = load_config(path, env={})
        fresh = self._spawn(proc.org, proc.server, path, config, proc.log_path.parent)
        self.processes[self.processes.index(proc)] = fresh
        self._wait(fresh, timeout)
        return fresh

    def find(self, org: str, server: str) -> ServerProcess:
        return next(p for p in self.processes if p.org == org and p.server == server)

    def stop(self, timeout: float = 10.0) -> None:
        stop_processes(self.processes, timeout)
        self.processes.clear()

    def __enter__(self) -> "LocalMesh":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_mesh_for(root: Path, orgs: tuple[str, ...] = DEFAULT_ORGS, free_ports: bool = True, min_paillier_bits: int = MIN_PAILLIER_BITS) -> dict[str, Path]:
    """Configs for the default three orgs under root, on free ports when asked (tests, bench)."""
    bases = dict(zip(orgs, find_free_base_ports(len(orgs)))) if free_ports else {o: DEFAULT_BASE_PORTS[o] for o in orgs}
    return write_local_mesh(root, bases, min_paillier_bits=min_paillier_bits)
