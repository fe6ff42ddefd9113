"""`riskmesh bench --phase lasso [--model lasso|logistic|svm|poisson]`: the secure model alone, on dealt shares.

N joined rows × D features are generated — `--design synthetic` (services/testkit/synthetic.py:
the insurer holds the first ⌈D/2⌉ features and the target, the hospital the rest, D/5
non-zero true weights plus noise) or `--design collinear` (services/testkit/collinear.py:
groups of three measurements correlating ≥ 0.99, units from 1e-3 to 1e3, a small-scale
target, alpha = 1e-4 × alpha_max by default) — and split by the test-only dealer (services/testkit/dealer.py) into
the three additive shares the secure join leaves behind, in its format and layout
(f = 32, ℓ = 64, σ = 40; rows in a random order nobody else knows), as the resharing
stores hold them: the insurer holds x + r of the hospital's columns, the hospital x + r
of the insurer's, the helper −r of both.

Each organisation runs its lasso server as a separate process over mTLS (the
production server, `services.lasso.server.build_server`, with its injected share
source: an `InMemoryShareSource` that this process loads from a file the dealer wrote
into that org's state directory — the resharing servers refuse to store shares that
no join produced). MPC traffic between the three lasso servers goes through the
byte-counting relays of services/bench/meshrun.py: `mpc_bytes_sent` is every byte the
three parties sent each other (TLS records of the Exchange streams).

`lasso_s` runs from the RunLasso requests (sent to the three servers at once, as the
gateways do) until both data owners hold the revealed coefficients: MPC input, Gram,
iterations, reveal. `lasso_phases_s` splits it at the insurer's first progress report
of each phase (the server stamps each report). The reference is scikit-learn's
`Lasso(alpha)` run to convergence (tol 1e-14) on the same plaintext table (the dealt,
fixed-point-decoded join): `objective_gap` is the relative excess of the secure model's
objective over it, `max_pred_diff` the largest prediction difference over the joined
rows relative to the target's range, `rel_coef_diff` the largest coefficient difference
relative to max |w|; `converged` and `iterations` are what the result reports (the
solver's certificate held, at that checkpoint). With `--model logistic|svm|poisson`
(synthetic design only) an outcome drawn from the target is fitted and compared, through
`rel_coef_diff`, with the exact optimum of the same objective; `converged` is then false
(the Newton steps stop once a step is small, without a certificate) and the objective and prediction
figures are left out.
`mpc_rounds` / `mpc_messages` per phase come from the lasso servers' `mpc traffic` spans
(services/bench/mpc_traffic.py), `cpu_s_by_org` from the party processes and their MPC
workers (services/bench/meshrun.py). No Paillier here: the dealer stands in for the join,
so the record has no `paillier_bits`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from riskmesh.v1 import common_pb2, join_pb2, lasso_pb2, lasso_pb2_grpc
from services.bench.full_bench import BenchError, coefficient_errors, median_summary, revealed, work_directory
from services.bench.meshrun import BenchMesh, Launch, Processes, TrafficCounter, cpu_delta, cpu_seconds_by_org
from services.bench.mpc_traffic import mpc_traffic
from services.join.core.packing import SlotLayout
from services.join.core.shares import value_bytes
from services.lasso.core.blocks import ShareBlock, decode_blocks, encode_block
from services.mesh.config import OrgConfig, load_config
from services.mesh.process import SINGLE_THREAD_ENV
from services.mesh.tls import MeshCredentials
from services.testkit.collinear import collinear_study_data
from services.testkit.dealer import FRACTIONAL_BITS, SIGMA_BITS, VALUE_BITS, deal
from services.testkit.outcomes import data_with_outcome
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import StudyData, joined_table, make_study_data
from services.tools.launcher import OrgPlacement, ServerProcess, start_server_process, stop_processes, wait_healthy

ORGS = ("insurer", "hospital", "helper")
STUDY_ID = "lasso-bench"
SHARES_FILE = "bench-shares.bin"
DEADLINE_S = 3600.0
PHASES = ("input", "gram", "iterations", "reveal")
DESIGNS = ("synthetic", "collinear")
SYNTHETIC_ALPHA = 0.1
#: The collinear design's alpha, relative to alpha_max (the hard regime: many features active).
COLLINEAR_ALPHA_FRACTION = 1e-4
COLLINEAR_SEED = 0


def design_data(design: str, records: int, features: int) -> StudyData:
    """The benchmark's joined table (every record in the join)."""
    if design == "collinear":
        return collinear_study_data(records, features, seed=COLLINEAR_SEED)
    return make_study_data(records, overlap=1.0, features=features)


def default_alpha(design: str, x: np.ndarray, y: np.ndarray) -> float:
    """0.1 for the synthetic design; a fixed fraction of alpha_max = max|xᵀ(y − ȳ)|/m for the collinear one."""
    if design != "collinear":
        return SYNTHETIC_ALPHA
    centred = x - x.mean(axis=0)
    return COLLINEAR_ALPHA_FRACTION * float(np.max(np.abs(centred.T @ (y - y.mean()))) / len(y))


def run_ids(repeat: int) -> list[str]:
    return [f"lasso-bench-{k + 1}" for k in range(repeat)]


def value_width() -> int:
    """Bytes per share on the wire, as the join writes them (⌈(ℓ + σ + 2)/8⌉)."""
    layout = SlotLayout(FRACTIONAL_BITS, VALUE_BITS, SIGMA_BITS, VALUE_BITS + SIGMA_BITS + 1, 1, 1)
    return value_bytes(layout)


def party_blocks(
    data: StudyData, rng: np.random.Generator
) -> tuple[dict[str, list[ShareBlock]], np.ndarray, np.ndarray]:
    """Deal the joined table; org → its share blocks (as its resharing store would hold
    them), and the plaintext (X, y) in the dealt order for the reference."""
    joined = joined_table(data)
    dealt = deal(joined.table, joined.owners, rng)
    width = value_width()

    def block(share: np.ndarray, owner: int) -> ShareBlock:
        """The columns of `owner` (0 = insurer, 1 = hospital), in study order."""
        cols = [j for j, o in enumerate(joined.owners) if o == owner]
        values = [list(row) for row in share[:, cols].tolist()]
        return ShareBlock(tuple(joined.names[j] for j in cols), values, width, FRACTIONAL_BITS, VALUE_BITS, SIGMA_BITS)

    share_a, share_b, share_h = dealt.shares
    blocks = {
        "insurer": [block(share_a, 1)],
        "hospital": [block(share_b, 0)],
        "helper": [block(share_h, 0), block(share_h, 1)],
    }
    return blocks, dealt.table[:, : joined.target], dealt.table[:, joined.target]


# The shares file: length-prefixed GetSharesResponse messages (the resharing wire form).


def write_shares(path: Path, blocks: Iterable[ShareBlock]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for block in blocks:
            for message in encode_block("dealt", block):
                data = message.SerializeToString()
                f.write(struct.pack(">I", len(data)))
                f.write(data)
    os.chmod(path, 0o600)
    return path


def read_shares(path: Path) -> list[ShareBlock]:
    def messages() -> Iterator[join_pb2.GetSharesResponse]:
        with path.open("rb") as f:
            while header := f.read(4):
                (size,) = struct.unpack(">I", header)
                yield join_pb2.GetSharesResponse.FromString(f.read(size))

    return decode_blocks("dealt", messages())


# One party: the production lasso server with this org's dealt shares.


def party_main(config_path: Path, shares_path: Path, repeat: int) -> int:
    from services.lasso.server import build_server
    from services.lasso.shares import InMemoryShareSource
    from services.mesh.telemetry import setup_tracing

    config = load_config(config_path)
    blocks = read_shares(shares_path)
    source = InMemoryShareSource({run_id: blocks for run_id in run_ids(repeat)})
    provider = setup_tracing(config.org, "lasso", config.state_dir)

    async def serve() -> None:
        server = await build_server(config, shares=source)
        await server.serve_until_signal()

    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()
    return 0


@dataclass
class LassoParties:
    """The three lasso party processes (a `Processes` for BenchMesh)."""

    processes: list[ServerProcess]

    def stop(self, timeout: float = 10.0) -> None:
        stop_processes(self.processes, timeout)
        self.processes.clear()


def launch_parties(shares: Mapping[str, list[ShareBlock]], repeat: int) -> Launch:
    """A BenchMesh launcher: this benchmark's lasso party process per org, with its shares."""

    def launch(config_paths: dict[str, Path], placements: dict[str, OrgPlacement], timeout: float) -> Processes:
        parties = LassoParties([])
        try:
            for org, path in config_paths.items():
                config = load_config(path, env={})
                shares_path = write_shares(config.state_dir / SHARES_FILE, shares[org])
                log_path = config.state_dir / "logs" / "lasso.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                env = {
                    **os.environ,
                    **SINGLE_THREAD_ENV,
                    **placements.get(org, OrgPlacement()).env,
                    "RISKMESH_CONFIG": str(path),
                }
                command = [
                    sys.executable,
                    "-m",
                    "services.bench.lasso_bench",
                    "party",
                    "--config",
                    str(path),
                    "--shares",
                    str(shares_path),
                    "--repeat",
                    str(repeat),
                ]
                process = start_server_process(command, env, log_path)
                parties.processes.append(
                    ServerProcess(org, "lasso", process, log_path, f"{config.bind_host}:{config.health_port('lasso')}")
                )
            for proc in parties.processes:
                _wait_party(proc, timeout)
        except BaseException:
            parties.stop()
            raise
        return parties

    return launch


def _wait_party(proc: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.process.poll() is not None:
            raise BenchError(
                f"the lasso party of {proc.org} exited with {proc.process.returncode}: "
                f"{proc.log_path.read_text(errors='replace')[-1500:]}"
            )
        try:
            wait_healthy(proc.health_address, timeout=1.0)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the lasso party of {proc.org} is not healthy within {timeout:.0f} s (log: {proc.log_path})"
                ) from None


# The driver.


@dataclass
class PartyOutcome:
    result: lasso_pb2.ModelResult | None
    done_at: float
    phase_starts: dict[str, float]  # phase → first progress report (server clock, seconds)


async def _run_party(config: OrgConfig, run_id: str, spec: common_pb2.StudySpec) -> PartyOutcome:
    """RunLasso at `config.org`'s lasso server, as its gateway calls it."""
    credentials = MeshCredentials(config.pki_dir, config.org, "gateway")
    result: lasso_pb2.ModelResult | None = None
    starts: dict[str, float] = {}
    async with credentials.channel(config.org, "lasso", config.self_endpoint.address("lasso")) as channel:
        stub = lasso_pb2_grpc.LassoServiceStub(channel)
        async for reply in stub.RunLasso(lasso_pb2.RunLassoRequest(run_id=run_id, spec=spec), timeout=DEADLINE_S):
            if reply.HasField("result"):
                result = reply.result
            elif reply.progress.phase != common_pb2.PHASE_UNSPECIFIED:
                name = common_pb2.Phase.Name(reply.progress.phase).removeprefix("PHASE_").lower()
                starts.setdefault(
                    name, reply.progress.at.ToNanoseconds() / 1e9 if reply.progress.HasField("at") else time.time()
                )
    return PartyOutcome(result, time.time(), starts)


def split_phases(request_at: float, done_at: float, starts: Mapping[str, float]) -> dict[str, float]:
    """Seconds per MPC phase: from each phase's first report to the next phase's (the
    first from the request, the last until done); unreported phases are left out."""
    marks = sorted((t, name) for name, t in starts.items() if name in PHASES)
    out: dict[str, float] = {}
    for k, (t, name) in enumerate(marks):
        begin = request_at if k == 0 else t
        end = marks[k + 1][0] if k + 1 < len(marks) else done_at
        out[name] = round(max(0.0, end - begin), 3)
    return out


async def _run_all(
    configs: Mapping[str, OrgConfig], run_id: str, spec: common_pb2.StudySpec
) -> tuple[float, dict[str, PartyOutcome], float]:
    request_at = time.time()
    started = time.perf_counter()
    tasks = {org: asyncio.ensure_future(_run_party(configs[org], run_id, spec)) for org in ORGS}
    owners_done = await asyncio.gather(tasks["insurer"], tasks["hospital"])
    elapsed = time.perf_counter() - started
    outcomes = {"insurer": owners_done[0], "hospital": owners_done[1], "helper": await tasks["helper"]}
    return elapsed, outcomes, request_at


#: --model → (ModelKind, l1_ratio, outcome drawn from the generated target or None, default alpha or
#: None for the design's).
MODELS: dict[str, tuple[int, float, str | None, float | None]] = {
    "lasso": (common_pb2.MODEL_KIND_LASSO, 0.0, None, None),
    "logistic": (common_pb2.MODEL_KIND_LOGISTIC, 1.0, "binary", 0.01),
    "poisson": (common_pb2.MODEL_KIND_POISSON, 1.0, "count", 0.003),
    "svm": (common_pb2.MODEL_KIND_SVM, 0.0, "binary", 0.01),
}


def bench_lasso(
    records: int,
    features: int = 10,
    alpha: float | None = None,
    latency_ms: float = 0.0,
    repeat: int = 1,
    workdir: Path | None = None,
    design: str = "synthetic",
    model: str = "lasso",
) -> dict[str, Any]:
    """The secure model on `records` dealt joined rows of `design`; medians over `repeat` runs.

    `model` lasso: scikit-learn's Lasso(alpha) run to convergence is the reference. The GLMs
    (logistic with the L1 penalty, Poisson with L1, SVM with L2; synthetic design only) fit an
    outcome drawn from the generated target (services/testkit/outcomes.py); their reference is
    the exact optimum of the same objective on the plaintext join
    (services/testkit/glm_reference.fit_glm_exact, run until nothing changes).
    """
    if (
        records < 2
        or features < 2
        or repeat < 1
        or (alpha is not None and alpha <= 0)
        or latency_ms < 0
        or design not in DESIGNS
    ):
        raise ValueError(
            f"records >= 2, features >= 2, repeat >= 1, alpha > 0, latency >= 0 and a design in {DESIGNS} are required"
        )
    if model not in MODELS or (model != "lasso" and design != "synthetic"):
        raise ValueError(f"model must be one of {', '.join(MODELS)}; the GLMs run on the synthetic design only")
    kind, l1_ratio, outcome, model_alpha = MODELS[model]
    data = design_data(design, records, features)
    if outcome is not None:
        data = data_with_outcome(data, outcome)
    blocks, x, y = party_blocks(data, np.random.default_rng(20240611))
    alpha = alpha if alpha is not None else model_alpha if model_alpha is not None else default_alpha(design, x, y)
    names = [c.name for c in (*data.insurer.columns, *data.hospital.columns)]
    spec = spec_for(data, STUDY_ID, alphas=[alpha], kind=kind, l1_ratio=l1_ratio)
    if outcome is None:
        reference = lasso_reference(names, x, y, alpha, tol=1e-14)  # run to convergence: the objective gap's yardstick
    else:
        reference = _glm_reference(names, spec, x, y)
    load_before = os.getloadavg()[0]
    runs: list[dict[str, Any]] = []
    with work_directory(workdir, "riskmesh-bench-lasso-") as root:
        mesh = BenchMesh(
            root / "mesh", latency_ms=latency_ms, servers=("lasso",), launch=launch_parties(blocks, repeat)
        )
        with mesh:
            assert mesh.sampler is not None and mesh.mesh is not None
            configs = {org: load_config(path, env={}) for org, path in mesh.config_paths.items()}
            for run_id in run_ids(repeat):
                before = mesh.counter.snapshot()
                cpu_before = cpu_seconds_by_org(mesh.mesh.processes)
                mesh.sampler.reset()
                elapsed, outcomes, request_at = asyncio.run(_run_all(configs, run_id, spec))
                peaks = mesh.sampler.peaks()
                runs.append(
                    _figures(
                        records,
                        features,
                        alpha,
                        elapsed,
                        outcomes,
                        request_at,
                        reference,
                        TrafficCounter.delta(mesh.counter.snapshot(), before),
                        peaks.largest_process_mb(),
                        x,
                        y,
                    )
                )
                runs[-1]["cpu_s_by_org"] = cpu_delta(cpu_seconds_by_org(mesh.mesh.processes), cpu_before)
        # The parties have stopped and flushed their spans.
        for run_id, figures in zip(run_ids(repeat), runs, strict=True):
            figures.update(mpc_traffic([root], run_id))
    summary = median_summary(runs)
    summary.update(
        {
            "phase": "lasso",
            "design": design,
            "model": model,
            "latency_ms": latency_ms,
            "repeat": repeat,
            "lasso_s_runs": [r["lasso_s"] for r in runs],
            "load_1m_before": round(load_before, 2),
            "load_1m_after": round(os.getloadavg()[0], 2),
        }
    )
    return summary


def accuracy(
    secure: Mapping[str, float], reference: Mapping[str, float], x: np.ndarray, y: np.ndarray, alpha: float
) -> dict[str, float]:
    """Relative objective gap against the reference and the largest prediction difference relative to the
    target's range, on the plaintext join (x, y) whose columns follow the reference's feature order."""
    names = [n for n in reference if n != "(intercept)"]
    w, w_ref = np.array([secure[n] for n in names]), np.array([reference[n] for n in names])
    b, b_ref = secure["(intercept)"], reference["(intercept)"]

    def objective(coef: np.ndarray, intercept: float) -> float:
        return float(0.5 * np.mean((y - x @ coef - intercept) ** 2) + alpha * np.abs(coef).sum())

    best = objective(w_ref, b_ref)
    return {
        "objective_gap": (objective(w, b) - best) / best,
        "max_pred_diff": float(np.max(np.abs(x @ (w - w_ref) + (b - b_ref))) / np.ptp(y)),
    }


def _glm_reference(names: list[str], spec: common_pb2.StudySpec, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from services.lasso.worker.lasso_program import regression_spec
    from services.testkit.glm_reference import fit_glm_exact

    exact = fit_glm_exact(x, y, regression_spec(spec))
    return {**dict(zip(names, (float(w) for w in exact.coefficients), strict=True)), "(intercept)": exact.intercept}


def _figures(
    records: int,
    features: int,
    alpha: float,
    elapsed: float,
    outcomes: Mapping[str, PartyOutcome],
    request_at: float,
    reference: Mapping[str, float],
    sent: Mapping[str, int],
    peak_rss_mb: float,
    x: np.ndarray,
    y: np.ndarray,
) -> dict[str, Any]:
    results = [outcomes[o].result for o in ("insurer", "hospital")]
    if any(r is None or not r.coefficients for r in results):
        raise BenchError("a data owner received no coefficients")
    insurer, hospital = results
    assert insurer is not None and hospital is not None
    secure = revealed(insurer)
    insurer_view = outcomes["insurer"]
    return {
        "records": records,
        "features": features,
        "alpha": alpha,
        "nonzero": sum(1 for c in insurer.coefficients if c.value != 0.0),
        "lasso_s": round(elapsed, 3),
        "lasso_phases_s": split_phases(request_at, insurer_view.done_at, insurer_view.phase_starts),
        "iterations": int(insurer.iterations),
        "converged": bool(insurer.converged and hospital.converged),
        "certified_gap": float(insurer.certified_gap),
        "mpc_bytes_sent": sum(sent.values()),
        "mpc_bytes_sent_by_org": dict(sent),
        **coefficient_errors(secure, reference),
        **(accuracy(secure, reference, x, y, alpha) if insurer.kind == common_pb2.MODEL_KIND_LASSO else {}),
        "owners_agree": revealed(hospital) == secure,
        "helper_result_empty": not (outcomes["helper"].result and outcomes["helper"].result.coefficients),
        "peak_rss_mb": peak_rss_mb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.lasso_bench", description="(internal) one lasso party of the lasso benchmark"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    party = sub.add_parser("party", help="serve this org's lasso with dealt shares until SIGTERM")
    party.add_argument("--config", type=Path, required=True)
    party.add_argument("--shares", type=Path, required=True)
    party.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    return party_main(args.config, args.shares, args.repeat)


if __name__ == "__main__":
    raise SystemExit(main())
