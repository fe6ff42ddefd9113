"""`riskmesh demo`: start three organisations on localhost and show them working together.

Today it shows every server's health and the cross-org mTLS handshake; the full study
(join, Lasso, coefficients beside scikit-learn, trace summary) runs here as those
phases land.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.mesh.config import load_config
from services.mesh.launcher import LocalMesh, local_mesh_for

console = Console()


def run_demo(home: Path) -> dict:
    """Run the demo under `home` (wiped first) and return the summary it prints last."""
    if home.exists():
        shutil.rmtree(home)
    configs = local_mesh_for(home)
    with console.status("starting insurer, hospital and helper (one process per server)…"):
        mesh = LocalMesh(configs).start()
    try:
        health = Table(title="servers (grpc.health.v1 on the plaintext health port)")
        for col in ("org", "server", "pid", "health port", "status"):
            health.add_column(col)
        for p in mesh.processes:
            health.add_row(p.org, p.server, str(p.process.pid), p.health_address, "[green]SERVING[/]")
        console.print(health)

        handshake = Table(title="cross-organisation handshake over mTLS (GatewayService.CheckPeers)")
        for col in ("from", "to", "identity seen", "role", "ms"):
            handshake.add_column(col)
        reachable = 0
        for org, path in configs.items():
            config = load_config(path, env={})
            with GatewayClient.from_pki(config.self_endpoint.address("gateway"), org, config.pki_dir) as gw:
                reply = gw.check_peers()
            for peer in reply.peers:
                reachable += peer.reachable
                shown = common_pb2.Role.Name(peer.role) if peer.reachable else f"[red]{peer.error}[/]"
                handshake.add_row(org, peer.org, f"spiffe://{peer.org}/gateway", shown, f"{peer.latency_ms:.1f}")
        console.print(handshake)
    finally:
        mesh.stop()
    summary = {"orgs": len(configs), "servers": sum(len(load_config(p, env={}).servers) for p in configs.values()), "handshakes_ok": reachable, "handshakes": 6}
    return summary


def main(home: Path) -> int:
    summary = run_demo(home)
    print(json.dumps(summary))
    return 0 if summary["handshakes_ok"] == summary["handshakes"] else 1
