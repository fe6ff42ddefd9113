"""`riskmesh demo`: three organisations on localhost run a whole study.

Makes the dev PKI and bundled synthetic data (insurer: hospitalisation days + care use;
hospital: lifestyle; shared patients by birth date + postal code; a known sparse model),
starts every server of the three orgs as its own process, proposes, approves, runs with
live progress, prints the revealed coefficients next to scikit-learn's Lasso on the
plaintext join (which only this demo, holding both files, can compute), the trace
summary, stops the orgs and prints one JSON line last.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from rich.console import Console

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.testkit.studies import spec_for
from services.cli.study import print_result, print_run, watch_run
from services.testkit.plain_reference import lasso_reference
from services.testkit.synthetic import make_study_data, reference_join
from services.tools.traces import load_trace, summary, waterfall_png, waterfall_text
from services.mesh.config import load_config
from services.tools.launcher import Interrupted, LocalMesh, local_mesh_for, stop_on_signals

console = Console()

DEMO_STUDY = "hospitalisation-risk"
DEMO_ALPHA = 0.3  # zeroes the four lifestyle/care features that have no true effect


class PreparedMesh(Protocol):
    """Organisations placed elsewhere than `LocalMesh` puts them (e.g. `HostsMesh`: one
    network namespace each); `config_paths` are how this machine reaches their servers."""

    config_paths: dict[str, Path]

    @property
    def processes(self) -> Sequence[object]: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...


def run_demo(home: Path, records: int = 2000, overlap: float = 0.6, mesh: PreparedMesh | None = None) -> dict:
    """The whole study under `home`. Default: a `LocalMesh` on localhost, `home` wiped first;
    with `mesh`, its configs (under `home`) are used and it is started and stopped here."""
    if mesh is None:
        if home.exists():
            shutil.rmtree(home)
        mesh = LocalMesh(local_mesh_for(home))
    configs = mesh.config_paths
    orgs = {org: load_config(path, env={}) for org, path in configs.items()}
    data = make_study_data(records, overlap=overlap)
    sources = {"insurer": data.insurer.write_csv(orgs["insurer"].state_dir / "data" / "insurer.csv"),
               "hospital": data.hospital.write_csv(orgs["hospital"].state_dir / "data" / "hospital.csv")}
    console.rule("riskmesh demo")
    console.print(f"synthetic data: {records} patients at the insurer and at the hospital, {int(overlap * 100)}% shared; "
                  f"files stay in each org's own directory ({sources['insurer'].parent}, {sources['hospital'].parent})")
    started = time.perf_counter()
    clients: dict[str, GatewayClient] = {}
    try:
        with console.status("starting insurer, hospital and helper (one process per server)…"):
            mesh.start()
        console.print(f"{len(mesh.processes)} servers healthy in {time.perf_counter() - started:.1f} s")
        clients = {org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in orgs.items()}
        peers = clients["insurer"].check_peers()
        console.print("handshake from insurer: " + ", ".join(f"{p.org} {'✓' if p.reachable else '✗ ' + p.error}" for p in peers.peers))
        spec = spec_for(data, DEMO_STUDY, alphas=[DEMO_ALPHA])
        study = clients["insurer"].propose(spec, str(sources["insurer"]))
        console.print(f"insurer proposed [bold]{DEMO_STUDY}[/] (digest {study.spec_digest[:16]}…)")
        clients["hospital"].approve(DEMO_STUDY, study.spec_digest, str(sources["hospital"]))
        study = clients["helper"].approve(DEMO_STUDY, study.spec_digest)
        console.print(f"hospital approved, helper acknowledged → {common_pb2.StudyState.Name(study.state)}")
        run = clients["insurer"].start_run(DEMO_STUDY)
        console.print(f"run {run.run_id} started")
        final = watch_run(clients["insurer"], run.run_id)
        print_run(final)
        if final.state != common_pb2.RUN_STATE_SUCCEEDED:
            return {"ok": False, "run_id": final.run_id, "state": common_pb2.RunState.Name(final.state), "trace_id": final.trace_id}
        _, result = clients["insurer"].result(run.run_id)
        _, hospital_result = clients["hospital"].result(run.run_id)
    finally:
        for client in clients.values():
            client.close()
        mesh.stop()  # flushes every server's spans
    names, x, y = reference_join(data)
    reference = lasso_reference(names, x, y, DEMO_ALPHA)
    print_result(result, reference)
    secure = np.array([c.value for c in result.coefficients])
    plain = np.array([reference[c.feature] for c in result.coefficients])
    rel = float(np.max(np.abs(secure - plain)) / max(np.max(np.abs(plain)), 1e-12))
    console.print(f"max |secure − scikit-learn| / max |scikit-learn| = {rel:.2e}; hospital received the same model: "
                  f"{[c.value for c in hospital_result.coefficients] == [c.value for c in result.coefficients]}")
    rows = load_trace([home], final.trace_id)
    console.rule("trace summary")
    console.print(waterfall_text(rows))
    trace_summary = summary(rows)
    png = waterfall_png(rows, home / "trace-waterfall.png", f"{DEMO_STUDY} — trace {final.trace_id[:12]}…")
    console.print(f"{trace_summary['spans']} spans from {', '.join(trace_summary['orgs'])} in trace {final.trace_id}; waterfall: {png}")
    return {"ok": True, "run_id": final.run_id, "joined": int(result.joined), "rel_coef_diff": rel, "trace_id": final.trace_id,
            "spans": trace_summary["spans"], "orgs_in_trace": len(trace_summary["orgs"]), "seconds": round(time.perf_counter() - started, 2)}


def main(home: Path) -> int:
    with stop_on_signals():  # SIGTERM stops every server as Ctrl-C does, also when SIGINT came in ignored
        try:
            summary_ = run_demo(home)
        except Interrupted as exc:
            console.print(f"[red]{exc}: stopped every server[/]")
            return 128 + exc.signum
    print(json.dumps(summary_))
    return 0 if summary_["ok"] and summary_["rel_coef_diff"] <= 1e-5 else 1
