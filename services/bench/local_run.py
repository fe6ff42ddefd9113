"""Local harness: the secure regression as three processes over MPyC's own TCP.

    python -m services.bench.local_run --records 10000 --features 10 --alpha 0.5

The parent makes a synthetic study (``synthetic``), starts three party
processes on 127.0.0.1 and prints per-phase wall times (input, gram,
iterations, reveal — as seen by party 0), the total, each party's CPU time
for the run (a load-independent measure: the machine may be shared), the
largest coefficient difference to scikit-learn, the solver iterations used and
whether the convergence certificate held. Every party process rebuilds the same
dealt shares from the seed (test harness only: no shares cross processes) and
keeps its own matrix. Party processes use single-threaded BLAS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

from services.mesh.process import SINGLE_THREAD_ENV


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.bench.local_run", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000, help="joined rows m")
    parser.add_argument("--features", type=int, default=10, help="features d (>= 2)")
    parser.add_argument("--alpha", type=float, action="append", help="alpha (repeat for a CV grid)")
    parser.add_argument(
        "--kind", choices=["lasso", "elastic_net", "ridge", "logistic", "svm", "poisson"], default="lasso"
    )
    parser.add_argument(
        "--l1-ratio", type=float, default=0.5, help="elastic-net mixing (logistic: the L1 share, 0 = L2)"
    )
    parser.add_argument("--balanced", action="store_true", help="logistic: balanced class weights")
    parser.add_argument("--metric", action="append", default=[], help="a metric to reveal (repeat)")
    parser.add_argument("--cv-folds", type=int, default=0, help="K for K-fold cross-validation")
    parser.add_argument("--standardize", action="store_true")
    parser.add_argument("--iterations", type=int, default=0, help="ADMM iterations (0 = default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--design",
        choices=["synthetic", "collinear"],
        default="synthetic",
        help="collinear: services/testkit/collinear.py (alpha then relative to alpha_max)",
    )
    parser.add_argument("--party", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", type=str, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _spec(args: argparse.Namespace, study: Any) -> Any:
    from services.lasso.core.params import ModelKind, RegressionSpec

    alphas = tuple(args.alpha or [0.5])
    return RegressionSpec(
        kind=ModelKind(args.kind),
        alphas=alphas,
        ranges=study.ranges,
        target=study.target,
        l1_ratio={"elastic_net": args.l1_ratio, "logistic": args.l1_ratio, "poisson": args.l1_ratio, "svm": 0.0}.get(
            args.kind, 1.0
        ),
        cv_folds=args.cv_folds,
        standardize=args.standardize,
        iterations=args.iterations,
        column_owners=study.owners,
        balanced_class_weights=args.balanced,
        metrics=tuple(args.metric),
    )


def _party(args: argparse.Namespace) -> None:
    """One party process: prints one JSON line with its timings and result."""
    import numpy as np

    from services.lasso.mpc import secure_glm, secure_glm_cv, secure_poisson, secure_poisson_cv, secure_regression
    from services.lasso.mpc.runtime import create_runtime
    from services.testkit.dealer import deal

    study = _study(args)
    run_party = secure_glm.run_party if args.kind in ("logistic", "svm") else secure_regression.run_party
    if args.kind in ("logistic", "svm") and args.cv_folds > 1:
        run_party = secure_glm_cv.run_party
    if args.kind == "poisson":
        run_party = secure_poisson_cv.run_party if args.cv_folds > 1 else secure_poisson.run_party
    shares = deal(study.table, study.owners, np.random.default_rng(args.seed)).shares[args.party]
    spec = _spec(args, study)
    ports = [int(p) for p in args.ports.split(",")]
    mpc = create_runtime(args.party, [("127.0.0.1", port) for port in ports])
    marks: dict[str, float] = {}

    def on_progress(phase: str, done: int, total: int) -> None:
        marks.setdefault(phase, time.perf_counter())

    start, cpu_start = time.perf_counter(), time.process_time()
    result = mpc.run(run_party(mpc, shares, spec, on_progress))
    end, cpu = time.perf_counter(), time.process_time() - cpu_start
    order = ["input", "gram", "iterations", "reveal"]
    times = {}
    for k, phase in enumerate(order):
        stop = marks[order[k + 1]] if k + 1 < len(order) else end
        times[phase] = stop - marks[phase]
    times["total"] = end - start
    payload: dict[str, Any] = {"party": args.party, "timings": times, "cpu": cpu}
    if result is not None:
        payload["result"] = {
            "coefficients": list(result.coefficients),
            "intercept": result.intercept,
            "alpha": result.alpha,
            "cv_curve": [list(p) for p in result.cv_curve],
            "standardized": list(result.standardized_coefficients or []),
            "metrics": dict(result.metrics),
            "cv_metrics": dict(result.cv_metrics),
            "iterations": result.iterations,
            "converged": result.converged,
        }
    print(json.dumps(payload), flush=True)


def _study(args: argparse.Namespace) -> Any:
    """The joined table: synthetic (with a 0/1 outcome for the classifiers, a count for Poisson),
    or the collinear family with its alphas made absolute."""
    from services.testkit.outcomes import study_with_outcome
    from services.testkit.synthetic import JoinedTable, make_joined_table

    if args.design == "synthetic":
        table = make_joined_table(args.records, args.features, seed=args.seed)
        if args.kind == "poisson":
            return study_with_outcome(table, "count", seed=args.seed)
        return study_with_outcome(table, "binary", seed=args.seed) if args.kind in ("logistic", "svm") else table
    if args.kind in ("logistic", "svm", "poisson"):
        raise SystemExit("--design collinear is for the linear models only")
    import numpy as np

    from services.lasso.core.params import ColumnRange
    from services.testkit.collinear import as_joined, make_collinear

    design = make_collinear(args.records, args.features, seed=args.seed)
    table = as_joined(np.column_stack([design.x, design.y]))
    ranges = tuple(ColumnRange(*r) for r in (*design.feature_ranges, design.target_range))
    owners = tuple([0] * ((args.features + 1) // 2) + [1] * (args.features // 2) + [0])
    args.alpha = [a * design.alpha_max() for a in (args.alpha or [1e-4])]
    return JoinedTable(table, (*design.names, "outcome"), ranges, owners, target=args.features)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_local(argv: list[str]) -> list[dict[str, Any]]:
    """Start the three party processes with ``argv`` and return their JSON reports."""
    ports = ",".join(str(p) for p in _free_ports(3))
    env = {**os.environ, **SINGLE_THREAD_ENV}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.bench.local_run", *argv, "--party", str(i), "--ports", ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for i in range(3)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            for other in procs:
                if other.poll() is None:
                    other.kill()
            raise RuntimeError(f"party process failed:\n{err[-4000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.party is not None:
        _party(args)
        return
    os.environ.update(SINGLE_THREAD_ENV)
    import numpy as np

    from services.testkit.dealer import deal
    from services.testkit.glm_reference import fit_glm_exact
    from services.testkit.plain_reference import cv_curve_sklearn, fit_sklearn, split_table

    raw = sys.argv[1:] if argv is None else argv
    reports = run_local(raw)
    owner = reports[0]
    times = owner["timings"]
    study = _study(args)  # (collinear: makes the alphas absolute, as the parties did)
    print(
        f"records={args.records} features={args.features} design={args.design} kind={args.kind} "
        f"alphas={[float(f'{a:.6g}') for a in (args.alpha or [0.5])]}"
    )
    print(
        "timings (party 0, s): "
        + "  ".join(f"{k}={v:.2f}" for k, v in times.items())
        + "   cpu per party (s): "
        + " ".join(f"{r['cpu']:.2f}" for r in reports)
        + f"   load {os.getloadavg()[0]:.1f}"
    )
    spec = _spec(args, study)
    table = deal(study.table, study.owners, np.random.default_rng(args.seed)).table  # the parties' row order
    x, y = split_table(table, spec)
    secure = owner["result"]
    if spec.kind.is_glm:
        exact = fit_glm_exact(x, y, replace(spec, alphas=(secure["alpha"],), cv_folds=0, metrics=()))
        ws, w = np.asarray(secure["coefficients"]), exact.coefficients
        diff, scale = float(np.max(np.abs(ws - w))), float(np.max(np.abs(w)))
        print(
            f"alpha={secure['alpha']:g} max|w - w_exact| = {diff:.3e} (relative {diff / scale:.3e}), "
            f"|b - b_exact| = {abs(secure['intercept'] - exact.intercept):.3e}, zero pattern equal: "
            f"{bool(np.array_equal(ws == 0, w == 0))} ({int(np.sum(ws == 0))} zeros); metrics {secure['metrics']}"
        )
        return
    if spec.cross_validate:
        curve = cv_curve_sklearn(x, y, spec)
        print(
            "cv curve (alpha, secure MSE, sklearn MSE): "
            + ", ".join(f"({a:g}, {s:.6g}, {c:.6g})" for (a, s), (_, c) in zip(secure["cv_curve"], curve, strict=True))
        )
    w, b, _ = fit_sklearn(x, y, spec, secure["alpha"])
    ws = np.asarray(secure["coefficients"])
    diff = float(np.max(np.abs(ws - w)))
    scale = float(np.max(np.abs(w)))
    same_zeros = bool(np.array_equal(ws == 0, np.abs(w) < 1e-12))
    print(
        f"alpha={secure['alpha']:g} max|w - w_sklearn| = {diff:.3e} (relative {diff / scale:.3e}), "
        f"|b - b_sklearn| = {abs(secure['intercept'] - b):.3e}, zero pattern equal: {same_zeros} "
        f"({int(np.sum(ws == 0))} zeros); iterations {secure['iterations']}, certified: {secure['converged']}"
    )


if __name__ == "__main__":
    main()
