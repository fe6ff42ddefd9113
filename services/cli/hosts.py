"""`riskmesh demo-hosts`: the demo study with every organisation on its own host.

Each organisation runs in its own Linux network namespace with its own address
(services/tools/netns.py: `rm-<org>-<run>`, 10.77.k.2), its servers started there with
the environment the Kubernetes manifests set. With `--latency-ms`, the organisations
reach each other only through a user-space relay that delays every chunk by that much,
one way (the kernel here has no `netem`). Shows which address each organisation has,
the mTLS handshake from every gateway to every other, then runs the study of
`riskmesh demo` (services/cli/demo.py) across the namespaces and prints its JSON
summary last, with the latency and the addresses added.

Needs root and `ip netns`. Everything it creates (namespaces, veths, processes, the
socket directory) is removed at the end, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.cli.demo import run_demo
from services.mesh.config import load_config
from services.tools.launcher import Interrupted, stop_on_signals
from services.tools.netns import PUBLIC_SERVERS, HostsMesh, NetnsError

console = Console()


def topology_table(hosts: HostsMesh) -> Table:
    via = (
        f"relay in {hosts.network.wan}, +{hosts.latency_ms:g} ms each way"
        if hosts.latency_ms > 0
        else f"routed by {hosts.network.wan}"
    )
    table = Table(title=f"one network namespace per organisation (peers reach each other: {via})")
    for col in ("org", "namespace", "host address", "its servers, as its peers dial them"):
        table.add_column(col)
    for org, host in hosts.hosts.items():
        public = ", ".join(f"{s} {hosts.public_address(org, s)}" for s in PUBLIC_SERVERS[hosts.role(org)])
        table.add_row(org, host.namespace, host.address, public)
    return table


def handshake(hosts: HostsMesh) -> tuple[Table, int, int]:
    """Every gateway handshakes with every other over mTLS (GatewayService.CheckPeers)."""
    table = Table(title="cross-organisation handshake over mTLS, from each org's own namespace")
    for col in ("from", "to", "address dialled", "role seen", "ms"):
        table.add_column(col)
    ok = total = 0
    for org, path in hosts.config_paths.items():
        config = load_config(path, env={})
        with GatewayClient.from_pki(config.self_endpoint.address("gateway"), org, config.pki_dir) as gw:
            reply = gw.check_peers()
        for peer in reply.peers:
            total += 1
            ok += peer.reachable
            seen = common_pb2.Role.Name(peer.role) if peer.reachable else f"[red]{peer.error}[/]"
            table.add_row(org, peer.org, peer.address, seen, f"{peer.latency_ms:.1f}")
    return table, ok, total


def run_demo_hosts(home: Path, latency_ms: float, records: int = 2000) -> dict[str, Any]:
    """Run the demo study with one namespace per org under `home` (wiped first)."""
    if home.exists():
        shutil.rmtree(home)
    console.rule(f"riskmesh demo-hosts — latency {latency_ms:g} ms one way")
    with HostsMesh(home, latency_ms=latency_ms) as hosts:
        console.print(topology_table(hosts))
        started = time.perf_counter()
        with console.status("starting every server inside its organisation's namespace…"):
            hosts.start()
        console.print(
            f"{len(hosts.processes)} servers healthy in {time.perf_counter() - started:.1f} s, "
            "each inside its organisation's namespace"
        )
        table, ok, total = handshake(hosts)
        console.print(table)
        summary = run_demo(home, records=records, mesh=hosts)
        namespaces = {org: h.namespace for org, h in hosts.hosts.items()}
        addresses = {org: h.address for org, h in hosts.hosts.items()}
    console.print(
        f"removed namespaces {', '.join(namespaces.values())} and {hosts.network.wan}; nothing of the run is left"
    )
    return {**summary, "latency_ms": latency_ms, "hosts": addresses, "handshakes_ok": ok, "handshakes": total}


def main(home: Path, latency_ms: float, records: int = 2000) -> int:
    with stop_on_signals():  # SIGTERM cleans up like Ctrl-C
        try:
            summary = run_demo_hosts(home, latency_ms, records)
        except NetnsError as exc:
            console.print(f"[red]demo-hosts:[/] {exc}")
            return 2
        except Interrupted as exc:
            console.print(f"[red]{exc}: removed everything the run had made[/]")
            return 128 + exc.signum
    print(json.dumps(summary))
    ok = summary["ok"] and summary["rel_coef_diff"] <= 1e-5 and summary["handshakes_ok"] == summary["handshakes"]
    return 0 if ok else 1
