"""Organisations on separate host addresses on one machine: a Linux network namespace
per organisation, linked by veth pairs to a `wan` namespace that plays the internet.

    rm-insurer-<run>   eth0 10.77.1.2/24 ── veth ── to-insurer  10.77.1.1/24 ┐
    rm-hospital-<run>  eth0 10.77.2.2/24 ── veth ── to-hospital 10.77.2.1/24 ├─ rm-wan-<run>
    rm-helper-<run>    eth0 10.77.3.2/24 ── veth ── to-helper   10.77.3.1/24 ┘

`<run>` is `<pid>-<4 hex>`, so parallel runs never collide; inside its namespaces a run
is free to reuse the same 10.77.0.0/16 addresses. Every org's servers bind 0.0.0.0 on
base port 7100 in their own namespace, as in Kubernetes, and get the environment the
manifests set (RISKMESH_CONFIG, RISKMESH_PKI_DIR, RISKMESH_STATE_DIR,
RISKMESH_BIND_HOST) plus RISKMESH_ADDR_<ORG>_<SERVER> for every address they dial.

Latency. The kernel has no `netem`, so with `latency_ms > 0` the wan namespace does not
route at all (ip_forward = 0): a delaying relay (services/tools/relay.py, one process
in the wan namespace) listens on each org's wan-side address 10.77.k.1 — the org's
"public" address, like its LoadBalancer — for every server that other organisations
reach (gateway, lasso, and intersection at the helper or resharing at the owners), and
forwards to 10.77.k.2 with the delay added to every chunk, in each direction. Peers
dial 10.77.k.1, so any two orgs are `latency_ms` apart one way (a round trip costs
2 × latency_ms more), and no other path between them exists. With `latency_ms == 0`
the wan namespace routes (ip_forward = 1) and peers dial 10.77.k.2 directly.

The machine's own (root) namespace gets no interface and no address. This machine's
operator (the demo, tests, health polling) reaches an org's servers through unix
sockets in a private directory, bridged into that org's namespace to 127.0.0.1 by a
relay process without delay; `<home>/<org>/riskmesh.toml` names those sockets as the
org's own addresses, so `GatewayClient` and the `riskmesh` commands work unchanged,
while the servers read `<home>/<org>/server.toml`.

`HostsMesh` is a context manager: on exit (error or Ctrl-C included) it stops the
servers and relays, kills any process still inside its namespaces (by pid), deletes
the namespaces (which removes their veths) and the socket directory.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.mesh.config import HEALTH_OFFSET, ROLE_SERVERS, SERVER_OFFSETS, OrgConfig, OrgEndpoint, render_config
from services.tools.launcher import DEFAULT_ROLES, LocalMesh, OrgPlacement, ServerProcess
from services.tools.pki import DEFAULT_ORGS, ca_fingerprints, init_pki
from services.tools.relay import RelayProcess, RelayStartError, start_relay_process

BASE_PORT = 7100  # every organisation, as in k8s/
SUBNET_PREFIX = "10.77"
# The servers other organisations reach (docs/design.md, "Security"; the `-public` Services in k8s/).
PUBLIC_SERVERS = {"data_owner": ("gateway", "resharing", "lasso"), "helper": ("gateway", "intersection", "lasso")}
RUN_NAMESPACE = re.compile(r"^rm-[a-z0-9-]+?-(?P<pid>\d+)-[0-9a-f]{4}$")
MAX_UNIX_PATH = 100  # sun_path holds 108 bytes


class NetnsError(RuntimeError):
    """Network namespaces are unavailable, or setting them up or removing them failed."""


def ip(*args: str) -> str:
    """Run `ip <args>`; raise NetnsError with ip's own message on failure."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetnsError("the `ip` command (iproute2) is not installed") from None
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def require_netns() -> None:
    """Fail with a clear message unless this process can create network namespaces."""
    if os.geteuid() != 0:
        raise NetnsError("network namespaces need root: run this as root (e.g. `sudo make demo-hosts`)")
    if shutil.which("ip") is None:
        raise NetnsError("the `ip` command (iproute2) is not installed: apt-get install iproute2")
    try:
        ip("netns", "list")
    except NetnsError as exc:
        raise NetnsError(f"`ip netns` does not work here: {exc}") from None


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", namespace).split()]


def new_run_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(2)}"


def _kill_pids(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after `timeout` (pids this module started)."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def delete_namespace(namespace: str) -> None:
    """Kill every process still inside `namespace`, then delete it (its veths go with it)."""
    _kill_pids(namespace_pids(namespace))
    ip("netns", "delete", namespace)


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces that an earlier run left behind when it was killed outright
    (SIGKILL: no cleanup could run). A namespace is stale when its name has the run
    format and the pid in it is no longer alive."""
    removed = []
    for namespace in list_namespaces():
        match = RUN_NAMESPACE.match(namespace)
        if match and not psutil.pid_exists(int(match["pid"])):
            delete_namespace(namespace)
            removed.append(namespace)
    return removed


@dataclass(frozen=True)
class Host:
    """One organisation's namespace and addresses."""

    org: str
    namespace: str
    address: str  # its host address, 10.77.k.2
    wan_address: str  # the wan side of its link, 10.77.k.1 (where its relay listens)
    wan_link: str  # the veth end in the wan namespace

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)


class HostNetwork:
    """The namespaces and veth pairs of one run (no processes). `create()` undoes its own
    partial work when a step fails; `destroy()` removes whatever exists."""

    def __init__(self, orgs: Sequence[str], forward: bool, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.forward = forward
        self.wan = f"rm-wan-{self.run_id}"
        self.hosts = {org: self._host(k, org) for k, org in enumerate(orgs, start=1)}
        self._namespaces: list[str] = []

    def _host(self, k: int, org: str) -> Host:
        link = f"to-{org}" if len(f"to-{org}") <= 15 else f"to-org{k}"
        return Host(org, f"rm-{org}-{self.run_id}", f"{SUBNET_PREFIX}.{k}.2", f"{SUBNET_PREFIX}.{k}.1", link)

    @property
    def namespaces(self) -> list[str]:
        return [self.wan, *(h.namespace for h in self.hosts.values())]

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> HostNetwork:
        try:
            self._add_namespace(self.wan)
            ip("netns", "exec", self.wan, "sysctl", "-q", "-w", f"net.ipv4.ip_forward={int(self.forward)}")
            for host in self.hosts.values():
                self._add_namespace(host.namespace)
                ip(
                    "-n",
                    self.wan,
                    "link",
                    "add",
                    host.wan_link,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    host.namespace,
                )
                ip("-n", self.wan, "addr", "add", f"{host.wan_address}/24", "dev", host.wan_link)
                ip("-n", self.wan, "link", "set", host.wan_link, "up")
                ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", host.namespace, "link", "set", "eth0", "up")
                ip("-n", host.namespace, "route", "add", "default", "via", host.wan_address)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> list[str]:
        """Remove every namespace of this run; returns the failures (empty when clean)."""
        errors = []
        for name in reversed(self._namespaces):
            try:
                delete_namespace(name)
            except NetnsError as exc:
                errors.append(str(exc))
        self._namespaces = [n for n in self._namespaces if n in list_namespaces()]
        return errors

    def __enter__(self) -> HostNetwork:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        errors = self.destroy()
        if errors:
            raise NetnsError("cleanup failed: " + "; ".join(errors))


def _env_key(org: str, server: str) -> str:
    return f"RISKMESH_ADDR_{org.upper().replace('-', '_')}_{server.upper()}"


class HostsMesh:
    """Every org in its own namespace, on its own host address, optionally `latency_ms`
    apart. Enter to build the network, PKI, configs and relays; `start()`/`stop()` the
    servers (the `LocalMesh` interface, so `run_demo` can drive it); exit to remove all.

    `config_paths` are the operator's view (own servers via unix sockets); the servers
    read `server_config_paths` plus the environment of `server_env(org)`.
    """

    def __init__(
        self,
        home: Path,
        latency_ms: float = 0.0,
        orgs: tuple[str, ...] = DEFAULT_ORGS,
        only_servers: tuple[str, ...] | None = None,
        run_id: str | None = None,
    ) -> None:
        if latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms, got {latency_ms}")
        self.home = Path(home).resolve()
        self.latency_ms = latency_ms
        self.orgs = orgs
        self.only_servers = only_servers
        self.network = HostNetwork(orgs, forward=latency_ms == 0, run_id=run_id)
        self.run_id = self.network.run_id
        self.pki_dir = self.home / "pki"
        self.socket_dir: Path | None = None
        self.config_paths: dict[str, Path] = {}
        self.server_config_paths: dict[str, Path] = {}
        self.relays: list[RelayProcess] = []
        self.started_pids: list[int] = []
        self._mesh: LocalMesh | None = None

    # --- addresses -------------------------------------------------------------------
    @property
    def hosts(self) -> dict[str, Host]:
        return self.network.hosts

    def role(self, org: str) -> str:
        return DEFAULT_ROLES[org]

    def servers(self, org: str) -> tuple[str, ...]:
        servers = ROLE_SERVERS[self.role(org)]
        return servers if self.only_servers is None else tuple(s for s in servers if s in self.only_servers)

    def public_address(self, org: str, server: str) -> str:
        """Where the other organisations dial `org`'s `server`."""
        host = self.hosts[org]
        return f"{host.wan_address if self.latency_ms > 0 else host.address}:{BASE_PORT + SERVER_OFFSETS[server]}"

    def _socket(self, org: str, name: str) -> str:
        assert self.socket_dir is not None
        return f"unix:{self.socket_dir / f'{org}-{name}.sock'}"

    def operator_address(self, org: str, server: str) -> str:
        return self._socket(org, server)

    def health_address(self, org: str, server: str) -> str:
        return self._socket(org, f"health-{server}")

    def server_env(self, org: str) -> dict[str, str]:
        """What the org's servers get, as the Deployments set it (plus the addresses)."""
        host = self.hosts[org]
        env = {
            "RISKMESH_PKI_DIR": str(self.pki_dir),
            "RISKMESH_STATE_DIR": str(self.home / org / "state"),
            "RISKMESH_BIND_HOST": "0.0.0.0",
        }
        for server in ROLE_SERVERS[self.role(org)]:
            env[_env_key(org, server)] = f"{host.address}:{BASE_PORT + SERVER_OFFSETS[server]}"
        for peer in self.orgs:
            if peer != org:
                for server in PUBLIC_SERVERS[self.role(peer)]:
                    env[_env_key(peer, server)] = self.public_address(peer, server)
        return env

    # --- lifecycle ---------------------------------------------------------------------
    def open(self) -> HostsMesh:
        try:
            require_netns()
            remove_stale_namespaces()
            self.network.create()
            self.socket_dir = Path(tempfile.mkdtemp(prefix=f"rm-{self.run_id}-"))
            if len(self.health_address(self.orgs[0], "intersection")) - len("unix:") > MAX_UNIX_PATH:
                raise NetnsError(f"socket directory path too long for unix sockets: {self.socket_dir}")
            self._write_configs()
            self._start_relays()
        except BaseException:
            self.close()
            raise
        return self

    def _write_configs(self) -> None:
        init_pki(self.pki_dir, self.orgs)
        pins = ca_fingerprints(self.pki_dir, self.orgs)
        for org in self.orgs:
            peers = {
                p: OrgEndpoint(p, self.role(p), self.hosts[p].address, BASE_PORT, ca_sha256=pins[p])
                for p in self.orgs
                if p != org
            }
            state_dir = self.home / org / "state"
            server = OrgConfig(
                org,
                self.role(org),
                "0.0.0.0",
                BASE_PORT,
                self.pki_dir,
                state_dir,
                {},
                peers,
                ca_sha256=pins[org],
                reflection=True,
            )
            operator = OrgConfig(
                org,
                self.role(org),
                "127.0.0.1",
                BASE_PORT,
                self.pki_dir,
                state_dir,
                {s: self.operator_address(org, s) for s in ROLE_SERVERS[self.role(org)]},
                peers,
                ca_sha256=pins[org],
            )
            (self.home / org).mkdir(parents=True, exist_ok=True)
            self.server_config_paths[org] = self.home / org / "server.toml"
            self.server_config_paths[org].write_text(
                f"# {org}'s servers, inside network namespace {self.hosts[org].namespace}; "
                "addresses come from RISKMESH_ADDR_*\n" + render_config(server)
            )
            self.config_paths[org] = self.home / org / "riskmesh.toml"
            self.config_paths[org].write_text(
                f"# {org} as seen from this machine's root namespace: "
                "own servers through unix sockets (valid while the run lasts)\n" + render_config(operator)
            )

    def _start_relays(self) -> None:
        logs = self.home / "relays"
        for org in self.orgs:
            routes = []
            for server in ROLE_SERVERS[self.role(org)]:
                routes.append((self.operator_address(org, server), f"127.0.0.1:{BASE_PORT + SERVER_OFFSETS[server]}"))
                routes.append(
                    (
                        self.health_address(org, server),
                        f"127.0.0.1:{BASE_PORT + HEALTH_OFFSET + SERVER_OFFSETS[server]}",
                    )
                )
            self._add_relay(self.hosts[org].exec_prefix, routes, 0.0, logs / f"operator-{org}.log")
        if self.latency_ms > 0:
            routes = [
                (self.public_address(org, server), f"{self.hosts[org].address}:{BASE_PORT + SERVER_OFFSETS[server]}")
                for org in self.orgs
                for server in PUBLIC_SERVERS[self.role(org)]
            ]
            self._add_relay(("ip", "netns", "exec", self.network.wan), routes, self.latency_ms, logs / "wan.log")

    def _add_relay(self, prefix: Sequence[str], routes: list[tuple[str, str]], delay_ms: float, log_path: Path) -> None:
        try:
            relay = start_relay_process(routes, delay_ms, log_path, prefix)
        except RelayStartError as exc:
            raise NetnsError(str(exc)) from None
        self.relays.append(relay)
        self.started_pids.append(relay.process.pid)

    def start(self, timeout: float = 120.0) -> HostsMesh:
        """Start every org's servers in its namespace and wait until all are SERVING
        (nothing to do when they already run)."""
        if self.socket_dir is None:
            raise RuntimeError("HostsMesh.start() before open(): use it as a context manager")
        if self._mesh is not None and self._mesh.processes:
            return self
        placements = {
            org: OrgPlacement(
                self.hosts[org].exec_prefix,
                self.server_env(org),
                {s: self.health_address(org, s) for s in ROLE_SERVERS[self.role(org)]},
            )
            for org in self.orgs
        }
        self._mesh = LocalMesh(dict(self.server_config_paths), only_servers=self.only_servers, placements=placements)
        try:
            self._mesh.start(timeout)
        finally:
            self.started_pids += [p.process.pid for p in self._mesh.processes]
        return self

    @property
    def processes(self) -> list[ServerProcess]:
        return self._mesh.processes if self._mesh else []

    def stop(self) -> None:
        """Stop the servers (SIGTERM, so they flush their spans); the network stays."""
        if self._mesh is not None:
            self._mesh.stop()

    def close(self) -> None:
        """Stop everything and remove the namespaces; raise NetnsError if anything is left."""
        previous = (
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        errors: list[str] = []
        try:
            try:
                self.stop()
            except Exception as exc:  # keep cleaning up; reported below
                errors.append(f"stopping servers: {exc}")
            for relay in self.relays:
                relay.stop()
            self.relays.clear()
            errors += self.network.destroy()
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            errors += self.leftovers()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if errors:
            raise NetnsError("cleanup incomplete: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Anything of this run still present: namespaces, processes, the socket directory."""
        found = [f"namespace {n}" for n in list_namespaces() if n in self.network.namespaces]
        for pid in self.started_pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    found.append(f"process {pid}")
            except psutil.NoSuchProcess:
                pass
        if self.socket_dir is not None and self.socket_dir.exists():
            found.append(f"directory {self.socket_dir}")
        return found

    def __enter__(self) -> HostsMesh:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
