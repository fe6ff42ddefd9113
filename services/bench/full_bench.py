"""`riskmesh bench --phase all`: the whole study through the gateways, as in the demo.

Three organisations as separate processes over mTLS (services/bench/meshrun.py: every
cross-organisation connection through a byte-counting relay, optionally delaying),
generated data (`records` rows per data owner, `features` columns split over the
owners with features/5 non-zero true weights, half of each owner's rows in the join),
then: the insurer proposes, the hospital approves, the helper acknowledges, and each
repeat starts a run and waits for its result at the insurer. The revealed
coefficients are compared with scikit-learn's `Lasso(alpha)` on the plaintext join,
which only this harness (it generated both files) can compute.

Times. `total_s` is the client's wall clock from StartRun to the result in hand (server
start-up excluded: servers are long-lived). Before each run the harness waits until both
owners hold the material they make ahead of a run (docs/adr/0013-offline-keys-and-pools.md:
the run's key pair, the randomness pool for the other owner's key — made after the approvals
and again after each run) and reports that time apart: `prepared_s` is the wall clock of
that wait (from the approvals, or from the previous run's result), `prepared_cpu_s_by_org`
the CPU each org used meanwhile, `prepared_s_by_owner` the time each owner's gateway took to
prepare, and `used_prepared_keys` whether the run used both owners' prepared keys (else it
made them, and the pools, in-run: then they are inside `total_s`). The phase times come from the run's exported phase
spans (one per org and phase, JSON lines in each org's state directory; services/cli/
tracing.py), cut at these points, so that they add up to the spans' wall time:

    t0            the earliest phase span of the run (the first gateway starts setup)
    join_s        t0 → the last owner's `hashing_encryption` span ends (CSV checks,
                  tag, encrypt, upload to the helper; key pairs and randomness pools
                  only when not prepared before the run)
    reshare_s     → the last `resharing` span ends (the helper's match and mask,
                  delivery, decryption: every org stores its shares)
    lasso_s       → the last MPC span (input, gram, iterations, reveal) ends at any org
    lasso_phases_s  the same cut per MPC phase (each phase until its last party's end)

`cpu_s_by_org` is the CPU time (user + system) each org's processes used during the run —
its servers, their pool workers and the run's MPC worker (services/bench/meshrun.py).
`mpc_rounds` / `mpc_messages` count the MPC's rounds and messages per phase, from the lasso
servers' `mpc traffic` spans (services/bench/mpc_traffic.py). `paillier_bits` is the key size
the study used.

`bytes_sent` is what all three organisations sent to each other (TLS bytes through the
relays, per org in `bytes_sent_by_org`); `peak_rss_mb` is the largest resident set of
one process (a server or an MPC worker), `peak_rss_mb_by_org` the peak of the sum over
an org's processes — both sampled every 0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, lasso_pb2
from services.bench.meshrun import BenchMesh, TrafficCounter, cpu_delta, cpu_seconds_by_org
from services.bench.mpc_traffic import mpc_traffic
from services.bench.workerstats import WorkerReading, worker_figures
from services.mesh.config import MAX_UPLOAD_ROWS, load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import StudyData, make_study_data, reference_join
from services.tools.traces import SpanRow, load_trace

OVERLAP = 0.5
CSV_DECIMALS = 6
STUDY_ID = "bench"
JOIN_PHASES = ("setup", "hashing_encryption")
RESHARE_PHASES = ("intersection", "resharing")
LASSO_PHASES = ("input", "gram", "iterations", "reveal")
PREPARED_WAIT_S = 600.0


class BenchError(RuntimeError):
    """The benchmark could not produce figures (the message says why; no figures are made up)."""


@contextlib.contextmanager
def work_directory(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """`workdir` (kept) or a temporary directory (removed)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def phase_times(rows: Sequence[SpanRow]) -> dict[str, Any]:
    """Cut a run's phase spans into join, reshare and lasso times (module docstring)."""
    phases = [r for r in rows if r.phase]
    if not phases:
        raise BenchError("the run exported no phase spans")
    t0 = min(r.start for r in phases)

    def last_end(names: Sequence[str]) -> float | None:
        ends = [r.end for r in phases if r.phase in names]
        return max(ends) if ends else None

    join_end = last_end(("hashing_encryption",))
    reshare_end = last_end(("resharing",))
    lasso_end = last_end(LASSO_PHASES)
    if join_end is None or reshare_end is None or lasso_end is None:
        missing = [
            n
            for n, v in (("hashing_encryption", join_end), ("resharing", reshare_end), ("MPC", lasso_end))
            if v is None
        ]
        raise BenchError(f"the run's spans lack the {', '.join(missing)} phase(s)")
    breakdown: dict[str, float] = {}
    previous = reshare_end
    for name in LASSO_PHASES:
        end = last_end((name,))
        if end is not None:
            breakdown[name] = round(max(0.0, end - previous), 3)
            previous = max(previous, end)
    return {
        "join_s": round(join_end - t0, 3),
        "reshare_s": round(reshare_end - join_end, 3),
        "lasso_s": round(lasso_end - reshare_end, 3),
        "spans_wall_s": round(lasso_end - t0, 3),
        "lasso_phases_s": breakdown,
    }


def coefficient_errors(secure: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """max |w − w_ref| over the features, that relative to max |w_ref|, and the intercept's |b − b_ref|."""
    names = [n for n in reference if n != "(intercept)"]
    if set(names) - set(secure):
        raise BenchError(f"the result lacks coefficients for {sorted(set(names) - set(secure))}")
    diff = max(abs(secure[n] - reference[n]) for n in names)
    scale = max(abs(reference[n]) for n in names)
    out = {"max_abs_coef_diff": float(diff), "rel_coef_diff": float(diff / scale) if scale > 0 else float(diff)}
    if "(intercept)" in secure and "(intercept)" in reference:
        out["intercept_abs_diff"] = float(abs(secure["(intercept)"] - reference["(intercept)"]))
    return out


def sklearn_reference(data: StudyData, alpha: float) -> dict[str, float]:
    """scikit-learn's Lasso on the plaintext join as the owners' files hold it (tight
    tolerance): feature → w, and (intercept)."""
    from services.testkit.plain_reference import lasso_reference

    names, x, y = reference_join(data)
    # The owners' files hold the values with 6 decimals (OwnerTable.write_csv): fit on those.
    return lasso_reference(names, np.round(x, CSV_DECIMALS), np.round(y, CSV_DECIMALS), alpha)


def logistic_reference(data: StudyData, spec: common_pb2.StudySpec) -> dict[str, float]:
    """scikit-learn's LogisticRegression(C = 1/(m·α), l1_ratio = ρ) — the spec's objective
    (1/m)·Σ(log(1 + e^η) − y·η) + α·||w||₁ for ρ = 1 — on the plaintext join as the owners'
    files hold it (services/testkit/glm_reference.fit_glm_sklearn)."""
    from services.lasso.worker.lasso_program import regression_spec
    from services.testkit.glm_reference import fit_glm_sklearn

    names, x, y = reference_join(data)
    fit = fit_glm_sklearn(np.round(x, CSV_DECIMALS), np.round(y, CSV_DECIMALS), regression_spec(spec))
    return {**dict(zip(names, (float(w) for w in fit.coefficients), strict=True)), "(intercept)": fit.intercept}


def study_setup(model: str, data: StudyData, alpha: float) -> tuple[StudyData, common_pb2.StudySpec, dict[str, float]]:
    """The data, spec and scikit-learn reference of a whole-study benchmark: `lasso` (the
    generated continuous target) or `logistic` (L1; a yes/no outcome drawn from that target,
    services/testkit/outcomes.py)."""
    if model == "lasso":
        return data, spec_for(data, STUDY_ID, alphas=[alpha]), sklearn_reference(data, alpha)
    if model == "logistic":
        from services.testkit.outcomes import data_with_outcome

        binary = data_with_outcome(data, "binary")
        spec = spec_for(binary, STUDY_ID, alphas=[alpha], kind=common_pb2.MODEL_KIND_LOGISTIC, l1_ratio=1.0)
        return binary, spec, logistic_reference(binary, spec)
    raise ValueError(f"the whole-study benchmark fits lasso or logistic, not {model!r}")


def revealed(result: lasso_pb2.ModelResult) -> dict[str, float]:
    return {**{c.feature: float(c.value) for c in result.coefficients}, "(intercept)": float(result.intercept)}


def median_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One record from repeated runs: the median of every number (unrounded, but times —
    keys ending in `_s` — to the millisecond), all() of booleans, the first run's value
    otherwise (dicts of numbers: the median per key)."""
    if not runs:
        raise ValueError("no runs")
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(first, bool):
            out[key] = all(values)
        elif isinstance(first, (int, float)):
            out[key] = round(_median(values), 3) if key.endswith("_s") else _median(values)
        elif isinstance(first, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in first.values()
        ):
            out[key] = {k: _median([r[key][k] for r in runs if k in r.get(key, {})]) for k in first}
        else:
            out[key] = first
    return out


def _median(values: Sequence[int | float]) -> int | float:
    """The median, unrounded; an int when every value is an int and the median is whole."""
    median = statistics.median(values)
    if all(isinstance(v, int) for v in values) and float(median).is_integer():
        return int(median)
    return float(median)


@dataclass
class RunFigures:
    run_id: str
    trace_id: str
    total_s: float
    result: lasso_pb2.ModelResult
    joined: int
    bytes_by_org: dict[str, int]
    peak_rss_mb: float
    peak_rss_mb_by_org: dict[str, float]
    cpu_s_by_org: dict[str, float]
    done_at: float
    workers: dict[
        str, Any
    ]  # services/bench/workerstats.py: what each crypto worker did  # perf_counter when the result was in hand
    prepared: dict[str, Any]  # what the owners made before the run and whether the run used it (`wait_prepared`)


def wait_prepared(mesh: BenchMesh, owners: Mapping[str, GatewayClient], since: float, cpu_since: dict) -> dict:
    """Wait (at most PREPARED_WAIT_S) until every owner has the next run's key and pool ready;
    the wall time from `since`, the CPU each org used from `cpu_since`, each owner's own figure."""
    assert mesh.mesh is not None
    deadline = time.monotonic() + PREPARED_WAIT_S
    while True:
        status = {org: client.offline_status(STUDY_ID) for org, client in owners.items()}
        if all(s.ready for s in status.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {
        "prepared_ready": all(s.ready for s in status.values()),
        "prepared_s": round(time.perf_counter() - since, 3),
        "prepared_s_by_owner": {org: s.prepared_s for org, s in status.items()},
        "prepared_cpu_s_by_org": cpu_delta(cpu_seconds_by_org(mesh.mesh.processes), cpu_since),
    }


def _used_prepared(owners: Mapping[str, GatewayClient], run_id: str) -> bool:
    """Whether the run used both owners' prepared keys, as each owner's gateway recorded it."""
    status = [client.offline_status(STUDY_ID) for client in owners.values()]
    return all(s.last_run_id == run_id and s.last_run_prepared for s in status)


def _run_once(
    mesh: BenchMesh, insurer: GatewayClient, owners: Mapping[str, GatewayClient], since: float, cpu_since: dict
) -> RunFigures:
    assert mesh.sampler is not None and mesh.mesh is not None
    prepared = wait_prepared(mesh, owners, since, cpu_since)
    before = mesh.counter.snapshot()
    cpu_before = cpu_seconds_by_org(mesh.mesh.processes)
    workers_before = WorkerReading.take(mesh.mesh.processes, mesh.config_paths)
    mesh.sampler.reset()
    started = time.perf_counter()
    run = insurer.start_run(STUDY_ID)
    final = run
    for event in insurer.watch(run.run_id):
        final = event.run
    if final.state != common_pb2.RUN_STATE_SUCCEEDED:
        reason = (
            f"{common_pb2.Phase.Name(final.error.phase)} at {final.error.org}: {final.error.reason}"
            if final.HasField("error")
            else "no reason given"
        )
        raise BenchError(f"run {final.run_id} ended {common_pb2.RunState.Name(final.state)}: {reason}")
    _, result = insurer.result(run.run_id)
    done_at = time.perf_counter()
    total = done_at - started
    peaks = mesh.sampler.peaks()
    cpu = cpu_delta(cpu_seconds_by_org(mesh.mesh.processes), cpu_before)
    workers = worker_figures(
        workers_before, WorkerReading.take(mesh.mesh.processes, mesh.config_paths), mesh.crypto_workers
    )
    return RunFigures(
        final.run_id,
        final.trace_id,
        total,
        result,
        int(result.joined or final.joined),
        TrafficCounter.delta(mesh.counter.snapshot(), before),
        peaks.largest_process_mb(),
        peaks.org_mb(),
        cpu,
        done_at,
        workers,
        {**prepared, "used_prepared_keys": _used_prepared(owners, final.run_id)},
    )


def bench_all(
    records: int,
    features: int = 10,
    alpha: float = 0.1,
    latency_ms: float = 0.0,
    repeat: int = 1,
    workdir: Path | None = None,
    crypto_workers: int = 0,
    model: str = "lasso",
) -> dict[str, Any]:
    """Run the study `repeat` times on one mesh; the medians, and every run's total.
    `crypto_workers`: crypto-worker processes per data owner (0: the servers' own pools); `model` lasso or
    logistic (study_setup)."""
    if records < 2 or features < 2 or repeat < 1 or alpha <= 0 or latency_ms < 0:
        raise ValueError("records >= 2, features >= 2, repeat >= 1, alpha > 0 and latency >= 0 are required")
    data, spec, reference = study_setup(model, make_study_data(records, overlap=OVERLAP, features=features), alpha)
    load_before = os.getloadavg()[0]
    with work_directory(workdir, "riskmesh-bench-all-") as root:
        mesh = BenchMesh(
            root / "mesh",
            latency_ms=latency_ms,
            crypto_workers=crypto_workers,
            max_upload_rows=max(records, MAX_UPLOAD_ROWS),  # a 1M-row owner uploads above the default cap
        )
        configs = {org: load_config(path, env={}) for org, path in mesh.prepare().items()}
        sources = {
            t.org: t.write_csv(configs[t.org].state_dir / "data" / f"{t.org}.csv")
            for t in (data.insurer, data.hospital)
        }
        runs: list[RunFigures] = []
        with mesh:
            clients = {
                org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir)
                for org, c in configs.items()
            }
            try:
                study = clients["insurer"].propose(spec, str(sources["insurer"]))
                clients["hospital"].approve(STUDY_ID, study.spec_digest, str(sources["hospital"]))
                since, cpu_since = time.perf_counter(), cpu_seconds_by_org(mesh.mesh.processes)
                clients["helper"].approve(STUDY_ID, study.spec_digest)
                owners = {org: clients[org] for org in ("insurer", "hospital")}
                for _ in range(repeat):
                    runs.append(_run_once(mesh, clients["insurer"], owners, since, cpu_since))
                    since, cpu_since = runs[-1].done_at, cpu_seconds_by_org(mesh.mesh.processes)
            finally:
                for client in clients.values():
                    client.close()
        # The mesh has stopped: every server flushed its spans.
        per_run = [_figures(r, reference, root, records, features, spec.paillier_bits) for r in runs]
        startup_s = round(mesh.startup_s, 3)
        # As the TNO comparison times its side: from starting the processes to the first
        # run's coefficients in hand (study proposal and approvals included).
        process_start_to_result_s = round(runs[0].done_at - mesh.started_at, 3)
    summary = median_summary(per_run)
    summary.update(
        {
            "phase": "all",
            "model": model,
            "alpha": alpha,
            "latency_ms": latency_ms,
            "repeat": repeat,
            "startup_s": startup_s,
            "process_start_to_result_s": process_start_to_result_s,
            "total_s_runs": [r["total_s"] for r in per_run],
            "load_1m_before": round(load_before, 2),
            "load_1m_after": round(os.getloadavg()[0], 2),
            "phase_times_from": "exported phase spans",
        }
    )
    return summary


def _figures(
    run: RunFigures, reference: Mapping[str, float], root: Path, records: int, features: int, paillier_bits: int
) -> dict[str, Any]:
    times = phase_times(load_trace([root], run.trace_id))
    secure = revealed(run.result)
    nonzero = sum(1 for c in run.result.coefficients if c.value != 0.0)
    return {
        "records": records,
        "features": features,
        "paillier_bits": paillier_bits,
        "joined": run.joined,
        "join_s": times["join_s"],
        "reshare_s": times["reshare_s"],
        "lasso_s": times["lasso_s"],
        "total_s": round(run.total_s, 3),
        "spans_wall_s": times["spans_wall_s"],
        "lasso_phases_s": times["lasso_phases_s"],
        "iterations": int(run.result.iterations),
        **mpc_traffic([root], run.run_id),
        "nonzero": nonzero,
        **coefficient_errors(secure, reference),
        "bytes_sent": sum(run.bytes_by_org.values()),
        "bytes_sent_by_org": run.bytes_by_org,
        "peak_rss_mb": run.peak_rss_mb,
        "peak_rss_mb_by_org": run.peak_rss_mb_by_org,
        "cpu_s_by_org": run.cpu_s_by_org,
        **run.prepared,
        **run.workers,
        "trace_id": run.trace_id,
        "coefficients": secure,
    }
