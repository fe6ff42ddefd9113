"""Start one organisation, or all three, on this machine as separate server processes.

`write_local_mesh` writes a config per org (localhost, one dev PKI; the fixed base ports
7100/7200/7300, or ports reserved by this process); `LocalMesh` starts every server of
each org as its own process in its own process group (forked from one process that has
imported the server modules: forked_servers.py), waits until each answers SERVING
on its plaintext health port, and stops them with SIGTERM (then whatever is left of
their process groups). `stop_on_signals` makes SIGTERM stop a launcher as Ctrl-C does.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.mesh.config import (
    CRYPTO_WORKER,
    MAX_UPLOAD_ROWS,
    MIN_PAILLIER_BITS,
    ROLE_SERVERS,
    OrgConfig,
    OrgEndpoint,
    ServerPorts,
    load_config,
    render_config,
)
from services.mesh.process import SINGLE_THREAD_ENV
from services.tools.forked_servers import ForkedServer, start_forked_server
from services.tools.pki import DEFAULT_ORGS, ca_fingerprints, init_pki


def server_module(server: str) -> str:
    """The module of a server's console script `riskmesh-<server>` (pyproject.toml declares
    each once; the image and the k8s manifests run the same scripts)."""
    (script,) = entry_points(group="console_scripts", name=f"riskmesh-{server}")
    return script.module


DEFAULT_ROLES = {"insurer": "data_owner", "hospital": "data_owner", "helper": "helper"}
DEFAULT_BASE_PORTS = {"insurer": 7100, "hospital": 7200, "helper": 7300}

# Ports for servers started on this machine by tests, benchmarks and the demo. Probing
# for a free port and binding it later races with every other process on the machine,
# and a server cannot simply bind port 0 and report it: its peers' configs must name its
# address before any of them starts, and a restarted server must get the same port back.
# So this process binds port 0 once per server port (the kernel picks a free one) and
# keeps that socket bound, never listening, until it exits. The server binds the same
# port beside it: Linux lets two sockets that both set SO_REUSEADDR share a port as long
# as at most one listens, and gRPC sets SO_REUSEADDR on every listening socket. A socket
# that does not listen takes no connections; a bound port is never handed to another
# bind to port 0 nor to an outgoing connection, and a socket without SO_REUSEADDR, or a
# second server while the first listens, cannot bind it — between a server's kill and its
# restart too. (Handing the bound socket itself to the server would do the same, but gRPC
# cannot serve on a socket it did not open.) More in services/mesh/README.md.
_reserved: list[socket.socket] = []


def reserve_port(host: str = "127.0.0.1") -> int:
    """A free port on `host` that only a server (binding it with SO_REUSEADDR) can take,
    for the life of this process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    if sys.platform.startswith("linux"):
        _reserved.append(sock)
    else:  # BSD's SO_REUSEADDR shares no exact address: released at once, so not race-free there
        sock.close()
    return port


def reserve_server_ports(servers: tuple[str, ...], host: str = "127.0.0.1") -> dict[str, ServerPorts]:
    return {server: ServerPorts(reserve_port(host), reserve_port(host)) for server in servers}


def write_local_mesh(
    root: Path,
    orgs: tuple[str, ...] = DEFAULT_ORGS,
    host: str = "127.0.0.1",
    pki_dir: Path | None = None,
    reserve_ports: bool = False,
    policies: Mapping[str, Mapping[str, object]] | None = None,
    min_paillier_bits: int = MIN_PAILLIER_BITS,
    max_upload_rows: int = MAX_UPLOAD_ROWS,
    crypto_workers: int = 0,
) -> dict[str, Path]:
    """PKI + one config file per org under root; returns org → config path. Servers listen
    on DEFAULT_BASE_PORTS, or with `reserve_ports` on ports this process reserves. `policies`:
    an org's `[policy]` table (its disclosure floors), e.g. lower floors for tests on small joins.
    `min_paillier_bits` below 2048 only for test meshes that use fast 1024-bit keys;
    `max_upload_rows` above the default for benchmarks of large joins. `crypto_workers`: local
    crypto-worker processes per data owner (0: the servers' own process pools)."""
    root = Path(root).resolve()
    pki_dir = Path(pki_dir or root / "pki").resolve()
    init_pki(pki_dir, orgs)
    pins = ca_fingerprints(pki_dir, orgs)  # each config pins every org's CA
    ports = {org: reserve_server_ports(ROLE_SERVERS[DEFAULT_ROLES[org]], host) if reserve_ports else {} for org in orgs}
    workers = {org: crypto_workers if DEFAULT_ROLES[org] == "data_owner" else 0 for org in orgs}
    for org in orgs:
        if reserve_ports:
            names = tuple(f"{CRYPTO_WORKER}-{i}" for i in range(workers[org]))
            ports[org].update(reserve_server_ports(names, host))
    base = {org: 0 if reserve_ports else DEFAULT_BASE_PORTS[org] for org in orgs}
    paths = {}
    for org in orgs:
        peers = {
            o: OrgEndpoint(
                o,
                DEFAULT_ROLES[o],
                host,
                base[o],
                {s: f"{host}:{p.mtls}" for s, p in ports[o].items() if s in ROLE_SERVERS[DEFAULT_ROLES[o]]},
                ca_sha256=pins[o],
            )
            for o in orgs
            if o != org
        }
        policy = dict((policies or {}).get(org, {}))
        config = OrgConfig(
            org,
            DEFAULT_ROLES[org],
            host,
            base[org],
            pki_dir,
            root / org / "state",
            {},
            peers,
            ports=ports[org],
            policy=policy,
            ca_sha256=pins[org],
            min_paillier_bits=min_paillier_bits,
            max_upload_rows=max_upload_rows,
            reflection=True,
            crypto_workers=workers[org],
        )
        path = root / org / "riskmesh.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_config(config))
        paths[org] = path
    return paths


# A server that is still starting refuses the connection, and gRPC then waits out its
# reconnect backoff (1 s, growing) before trying again: the start would be seen up to a
# second late. Connecting to a local port that refuses is cheap, so retry every 50 ms.
HEALTH_POLL_S = 0.05
HEALTH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", int(HEALTH_POLL_S * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(HEALTH_POLL_S * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(HEALTH_POLL_S * 1000)),
]


def wait_healthy(address: str, timeout: float) -> None:
    """Block until the plaintext health port at `address` answers SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address, options=HEALTH_CHANNEL_OPTIONS) as channel:
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
            time.sleep(HEALTH_POLL_S)


@dataclass
class ServerProcess:
    org: str
    server: str  # a server of the role, or `crypto-worker-<i>`
    process: subprocess.Popen | ForkedServer
    log_path: Path
    health_address: str
    worker_index: int | None = None  # local crypto worker i


def start_server_process(command: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """A server process, output appended to `log_path`, in a process group of its own: the
    processes it starts (a join server's forkserver and pool workers, a lasso server's MPC
    workers) join that group, so `stop_processes` can end them too, and a Ctrl-C at the
    terminal reaches only the launcher, which stops the servers itself."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env), process_group=0
        )


def kill_process_group(process: subprocess.Popen | ForkedServer) -> None:
    """SIGKILL what is left of the process group led by `process` (it must have been
    started by `start_server_process` or forked, and have ended: its group then holds only its
    descendants; the group id stays reserved while any of them lives)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left (macOS answers EPERM for a group of zombies)


def stop_processes(processes: list[ServerProcess], timeout: float = 10.0) -> None:
    """SIGTERM every server (they drain gracefully), SIGKILL what is left at the deadline,
    then SIGKILL the rest of each server's process group (forkservers, pool and MPC workers).
    Interrupted (a signal arriving while it stops), it still kills everything first."""
    try:
        for proc in processes:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in processes:
            try:
                proc.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for proc in processes:
            if proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait()
            kill_process_group(proc.process)


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

    def start(self, timeout: float = 60.0) -> LocalMesh:
        for org, path in self.config_paths.items():
            config = load_config(path, env={})
            log_dir = config.state_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            for server in ROLE_SERVERS[config.role]:
                if self.only_servers is not None and server not in self.only_servers:
                    continue
                self.processes.append(self._spawn(org, server, path, config, log_dir))
            if self.only_servers is None or CRYPTO_WORKER in self.only_servers:
                for index in range(config.crypto_workers):
                    self.processes.append(self._spawn(org, CRYPTO_WORKER, path, config, log_dir, index))
        try:
            for proc in self.processes:
                self._wait(proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(
        self, org: str, server: str, path: Path, config: OrgConfig, log_dir: Path, index: int | None = None
    ) -> ServerProcess:
        placement = self.placements.get(org, OrgPlacement())
        env = {**os.environ, **SINGLE_THREAD_ENV, **self.extra_env, **placement.env, "RISKMESH_CONFIG": str(path)}
        module = server_module(server)
        name = server
        if index is not None:  # local crypto worker `index`: its own ports (config.worker_ports)
            env["RISKMESH_CRYPTO_WORKER_INDEX"] = str(index)
            name = f"{server}-{index}"
            health = f"{config.bind_host}:{config.worker_ports(index).health}"
        else:
            health = placement.health_addresses.get(server, f"{config.bind_host}:{config.health_port(server)}")
        log_path = log_dir / f"{name}.log"
        process: subprocess.Popen | ForkedServer
        if placement.command_prefix:  # e.g. `ip netns exec`: a fork would stay in this namespace
            command = [*placement.command_prefix, sys.executable, "-m", module, "--config", str(path)]
            process = start_server_process(command, env, log_path)
        else:
            process = start_forked_server(module, ["--config", str(path)], env, log_path, self._server_modules)
        return ServerProcess(org, name, process, log_path, health, index)

    @functools.cached_property
    def _server_modules(self) -> tuple[str, ...]:
        """Every server module this mesh may start, for the fork server to import once."""
        servers: set[str] = set()
        for path in self.config_paths.values():
            config = load_config(path, env={})
            servers.update(ROLE_SERVERS[config.role])
            if config.crypto_workers:
                servers.add(CRYPTO_WORKER)
        return tuple(sorted(server_module(s) for s in servers))

    def _wait(self, proc: ServerProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.process.poll() is not None:
                # a child that failed before opening its log has none (e.g. an unguarded __main__)
                tail = proc.log_path.read_text(errors="replace")[-2000:] if proc.log_path.exists() else "(no log)"
                raise RuntimeError(f"{proc.server} of {proc.org} exited with {proc.process.returncode}:\n{tail}")
            try:
                wait_healthy(proc.health_address, timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{proc.server} of {proc.org} not healthy within {timeout:.0f} s (log: {proc.log_path})"
                    ) from None

    def restart(self, proc: ServerProcess, timeout: float = 60.0) -> ServerProcess:
        """Stop one server (if still running) and start it again with the same config (and ports)."""
        stop_processes([proc], timeout)
        path = self.config_paths[proc.org]
        config = load_config(path, env={})
        server = CRYPTO_WORKER if proc.worker_index is not None else proc.server
        fresh = self._spawn(proc.org, server, path, config, proc.log_path.parent, proc.worker_index)
        self.processes[self.processes.index(proc)] = fresh
        self._wait(fresh, timeout)
        return fresh

    def find(self, org: str, server: str) -> ServerProcess:
        return next(p for p in self.processes if p.org == org and p.server == server)

    def stop(self, timeout: float = 10.0) -> None:
        stop_processes(self.processes, timeout)
        self.processes.clear()

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_mesh_for(
    root: Path,
    orgs: tuple[str, ...] = DEFAULT_ORGS,
    policies: Mapping[str, Mapping[str, object]] | None = None,
    min_paillier_bits: int = MIN_PAILLIER_BITS,
    max_upload_rows: int = MAX_UPLOAD_ROWS,
    crypto_workers: int = 0,
) -> dict[str, Path]:
    """Configs for the default three orgs under root, on ports this process reserves (tests, bench, demo)."""
    return write_local_mesh(
        root,
        orgs,
        reserve_ports=True,
        policies=policies,
        min_paillier_bits=min_paillier_bits,
        max_upload_rows=max_upload_rows,
        crypto_workers=crypto_workers,
    )


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (`stop_on_signals`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block (main thread only), SIGTERM and SIGINT raise `Interrupted` once, so
    the caller's clean-up (`finally: mesh.stop()`) runs alike for `kill <pid>` and Ctrl-C,
    and a second signal does not cut it short. SIGINT is handled even when inherited as
    ignored: a script's background job starts so, and Python then installs no handler."""
    received: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
