"""The rehearsal of real separation: each organisation in its own Linux network namespace,
on its own host address, 20 ms apart (one way) through the user-space delaying relay.

Needs root and `ip netns`; without them these tests are skipped, saying which is missing
(CI runs them as root). After every run nothing may be left: no namespace, no veth in
this machine's namespace, no process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from riskmesh.client import GatewayClient
from services.bench.drive import Harness, collect_shares, plaintext_join, reconstruct_table, run_join, same_rows
from services.mesh.config import load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.netns import HostsMesh, NetnsError, list_namespaces, namespace_pids, require_netns

pytestmark = pytest.mark.e2e

LATENCY_MS = 20.0
JOIN_SERVERS = ("gateway", "encryption", "intersection", "resharing")
RISKMESH = Path(sys.executable).parent / "riskmesh"


@pytest.fixture
def netns() -> Iterator[set[str]]:
    """Skip without root or `ip netns`; yield the root namespace's veths."""
    try:
        require_netns()
    except NetnsError as exc:
        pytest.skip(f"the hosts rehearsal needs root and `ip netns` (CI runs it as root): {exc}")
    yield _root_veths()


def _root_veths() -> set[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _processes_mentioning(*markers: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(m in cmdline for m in markers) and proc.pid != os.getpid():
            found.append(f"{proc.pid}: {cmdline}")
    return found


def assert_nothing_left(hosts: HostsMesh, root_veths_before: set[str]) -> None:
    assert [n for n in list_namespaces() if hosts.run_id in n] == []
    assert _root_veths() <= root_veths_before, "a veth appeared in this machine's namespace"
    assert [
        p for p in hosts.started_pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ] == []
    assert _processes_mentioning(str(hosts.home), str(hosts.socket_dir)) == []
    assert hosts.socket_dir is not None and not hosts.socket_dir.exists()
    assert hosts.leftovers() == []


def _connects_from(namespace: str, address: str) -> bool:
    """Whether a process inside `namespace` can open a TCP connection to `address`."""
    host, port = address.rsplit(":", 1)
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()"
    return (
        subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", probe], capture_output=True, timeout=30
        ).returncode
        == 0
    )


def test_handshake_and_secure_join_across_namespaces_with_latency(tmp_path: Path, netns: set[str]) -> None:
    with HostsMesh(tmp_path / "hosts", latency_ms=LATENCY_MS, only_servers=JOIN_SERVERS) as hosts:
        assert len({h.address for h in hosts.hosts.values()}) == 3
        assert set(list_namespaces()) >= {hosts.network.wan, *(h.namespace for h in hosts.hosts.values())}
        hosts.start()
        for proc in hosts.processes:  # every server runs inside its own org's namespace
            assert proc.process.pid in namespace_pids(hosts.hosts[proc.org].namespace), (proc.org, proc.server)

        # The relay is the only way between orgs: a peer's host address is unreachable,
        # its relayed ("public") address answers.
        hospital = hosts.hosts["hospital"]
        assert not _connects_from(hosts.hosts["insurer"].namespace, f"{hospital.address}:7100")
        assert _connects_from(hosts.hosts["insurer"].namespace, hosts.public_address("hospital", "gateway"))

        for org, path in hosts.config_paths.items():
            config = load_config(path, env={})
            with GatewayClient.from_pki(config.self_endpoint.address("gateway"), org, config.pki_dir) as gw:
                peers = gw.check_peers().peers
            assert sorted(p.org for p in peers) == sorted(o for o in hosts.orgs if o != org)
            for peer in peers:
                assert peer.reachable, (org, peer.org, peer.error)
                assert peer.address == hosts.public_address(peer.org, "gateway")
                assert peer.latency_ms >= 2 * LATENCY_MS, (
                    org,
                    peer.org,
                    peer.latency_ms,
                )  # at least one relayed round trip

        data = make_study_data(600, overlap=0.5, seed=11)
        configs = {org: load_config(path, env={}) for org, path in hosts.config_paths.items()}
        sources = {
            org: getattr(data, org).write_csv(configs[org].state_dir / "data" / f"{org}.csv")
            for org in ("insurer", "hospital")
        }
        spec = spec_for(data, "hosts-join")

        async def join() -> tuple[int, dict]:
            harness = Harness(hosts.config_paths)
            try:
                timings = await run_join(harness, spec, {o: str(p) for o, p in sources.items()}, uuid.uuid4().hex)
                return timings.joined, await collect_shares(harness, spec, timings.run_id)
            finally:
                await harness.close()

        joined, shares = asyncio.run(join())
        columns, rows = plaintext_join(data, sources)
        assert joined == len(rows) > 0
        assert same_rows(reconstruct_table(shares), columns, rows)
    assert_nothing_left(hosts, netns)


def test_whole_study_across_namespaces_with_latency(tmp_path: Path, netns: set[str]) -> None:
    from services.cli.demo import run_demo

    home = tmp_path / "study"
    with HostsMesh(home, latency_ms=LATENCY_MS) as hosts:
        summary = run_demo(home, records=400, mesh=hosts)
    assert summary["ok"], summary
    assert summary["joined"] > 0
    assert summary["rel_coef_diff"] <= 1e-5
    assert summary["orgs_in_trace"] == 3
    assert_nothing_left(hosts, netns)


def test_interrupted_demo_hosts_leaves_nothing(tmp_path: Path, netns: set[str]) -> None:
    """Ctrl-C in the middle of `riskmesh demo-hosts`: every namespace and process goes."""
    home = tmp_path / "interrupted"
    log = tmp_path / "demo-hosts.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [str(RISKMESH), "demo-hosts", "--home", str(home), "--latency-ms", str(LATENCY_MS), "--records", "200"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 60
        while "cross-organisation handshake" not in log.read_text(errors="replace"):
            assert child.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "demo-hosts did not reach the handshake in 60 s"
            time.sleep(0.2)
        assert [n for n in list_namespaces() if f"-{child.pid}-" in n], "the run's namespaces should exist now"
        child.send_signal(signal.SIGINT)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert [n for n in list_namespaces() if f"-{child.pid}-" in n] == []
    assert _root_veths() <= netns
    assert _processes_mentioning(str(home)) == []


def test_without_root_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NetnsError, match="need root"):
        require_netns()
    with pytest.raises(NetnsError, match="need root"):
        HostsMesh(Path("/nonexistent/riskmesh-home")).open()
