"""`riskmesh bench --compare-tno`: riskmesh and the public TNO packages, side by side, on
the same generated data in the same run.

The TNO packages are installed by this command into a scratch venv
(`.riskmesh/tno-venv`, never committed, never imported by riskmesh) with exactly the
pins in `TNO_PINS` (they install and import cleanly together here; a newer
`tno.mpc.encryption_schemes.utils` breaks the Paillier import). Their side runs as
three processes of `services/bench/tno_party.py` under that venv's Python: the
secure inner join over TNO's HTTP pools, then the secure Lasso (gradient descent) in
MPyC 0.10 over MPyC's TCP — the way the packages' READMEs run them.

Data: `make_study_data(records, overlap=0.5, features)`, each owner's file as the
riskmesh benchmark writes it (values with 6 decimals); the TNO owners get the same
values with the generator's normalised IDs (birth date | postal code). Both sides fit
the same model on the same plaintext join, and both are compared with scikit-learn on it:

- `--model lasso`: Lasso(alpha) (TNO: `Lasso`, gradient descent); scikit-learn's `Lasso(alpha)`.
- `--model logistic`: L1 logistic regression of a yes/no outcome drawn from the generated
  target (services/testkit/outcomes.py), objective (1/m)·Σ(log(1 + e^η) − y·η) + α·||w||₁
  with the intercept unpenalised — riskmesh's MODEL_KIND_LOGISTIC with l1_ratio 1, TNO's
  `Logistic(SolverTypes.GD, ExponentiationTypes.APPROX, PenaltyTypes.L1, alpha=α)` (its
  objective (1/2m)·Σ(−(1+y)log h − (1−y)log(1−h)) on ±1 labels is the same mean log-loss;
  its L1 prox skips the intercept), scikit-learn's `LogisticRegression(C = 1/(m·α),
  l1_ratio = 1)` (services/testkit/glm_reference.py). Beside the coefficient errors, each
  side's `objective_gap`: its objective on the plaintext join relative to scikit-learn's,
  (f − f*)/f*. TNO's approximated exponentiation (SecureML's piecewise-linear sigmoid) is
  not the logistic function: its gradient descent minimises a different loss. The exact
  one (`secure_pow`) did not finish 1,000 rows in 20 minutes on this machine (2.7 GB per
  party), so it is not offered.

Timing, the same way on both sides: from starting the parties' processes (riskmesh:
the 15 server processes; TNO: the 3 party processes) until the data owners hold the
coefficients (riskmesh: the study proposed, approved and run through the gateways).
Per side also the join and Lasso parts. The ratio is TNO's time over riskmesh's.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from services.bench.full_bench import (
    CSV_DECIMALS,
    OVERLAP,
    BenchError,
    bench_all,
    coefficient_errors,
    study_setup,
    work_directory,
)
from services.mesh.process import SINGLE_THREAD_ENV
from services.testkit.synthetic import OwnerTable, StudyData, make_study_data, reference_join

TNO_PINS = (
    "tno.mpc.mpyc.secure-learning==1.1.1",
    "tno.mpc.protocols.secure-inner-join==2.0.2",
    "tno.mpc.encryption_schemes.utils[gmpy]==0.15.0",
    "tno.mpc.communication==4.12.0",
    "tno.mpc.encryption_schemes.paillier==3.2.0",
    "tno.mpc.encryption_schemes.templates==4.2.1",
    "tno.mpc.mpyc.exponentiation==1.6.2",
    "tno.mpc.mpyc.stubs==2.11.0",
    "mpyc==0.10",
    "gmpy2",
    "numpy==1.26.4",
)
TNO_IMPORTS = (
    "tno.mpc.protocols.secure_inner_join",
    "tno.mpc.mpyc.secure_learning",
    "tno.mpc.encryption_schemes.paillier",
    "tno.mpc.communication",
    "mpyc.runtime",
)
VENV = Path(".riskmesh/tno-venv")
RESULT_PATH = Path(".riskmesh/bench/tno-compare.json")
PARTY_SCRIPT = Path(__file__).with_name("tno_party.py")
ROLES = ("alice", "bob", "henri")  # insurer, hospital, helper (TNO's example names)
TNO_TOLERANCE = 1e-4  # the package README's examples
TNO_MAX_ITERATIONS = 100  # the package's default
TNO_PAILLIER_BITS = 2048
TNO_PRECISION = 8  # decimal digits of TNO's fixed point (package README)
TIMEOUT_S = 4 * 3600.0
MODELS = ("lasso", "logistic")
TNO_SOLVERS = {
    "lasso": "Lasso(SolverTypes.GD)",
    "logistic": "Logistic(SolverTypes.GD, ExponentiationTypes.APPROX, PenaltyTypes.L1)",
}


class TnoUnavailable(RuntimeError):
    """The TNO side cannot run here; the message says exactly why."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log_path: Path) -> Path:
    """Create the scratch venv and install exactly TNO_PINS (once; a marker keeps the pins)."""
    python = venv_python(venv)
    marker = venv / "riskmesh-tno-pins.txt"
    wanted = "\n".join(TNO_PINS) + "\n"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    with log_path.open("w") as log:
        steps = []
        if not python.exists():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        steps.append([str(python), "-m", "pip", "install", "--quiet", *TNO_PINS])
        for step in steps:
            log.write("$ " + " ".join(step) + "\n")
            log.flush()
            done = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise TnoUnavailable(f"`{' '.join(step)}` failed with exit status {done.returncode}: {_tail(log_path)}")
    marker.write_text(wanted)
    return python


def check_imports(python: Path) -> None:
    code = "import " + ", ".join(TNO_IMPORTS)
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise TnoUnavailable(f"the TNO packages do not import in {python.parent.parent}: {done.stderr.strip()[-1500:]}")


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:].strip() if path.exists() else ""


def free_ports(count: int) -> list[int]:
    """`count` consecutive free localhost ports."""
    for base in range(24000 + (os.getpid() % 200) * 50, 60000, 50):
        ports = list(range(base, base + count))
        ok = True
        for port in ports:
            with closing(socket.socket()) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return ports
    raise TnoUnavailable("no free localhost ports for the TNO parties")


def write_tno_input(table: OwnerTable, path: Path) -> Path:
    """The owner's values exactly as its riskmesh CSV has them, keyed by the normalised ID."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in table.columns] + ([table.target.name] if table.target else [])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *names])
        for cid, row in zip(table.canonical, table.values, strict=False):
            writer.writerow([cid, *(f"{v:.{CSV_DECIMALS}f}" for v in row)])
    return path


def tno_coefficients(columns: Sequence[str], target: str, values: Sequence[float]) -> dict[str, float]:
    """TNO's coefficient vector (intercept first, then the joined columns without the
    target) as feature → w and (intercept)."""
    features = [c for c in columns if c != target]
    if len(values) != len(features) + 1:
        raise BenchError(f"TNO returned {len(values)} coefficients for {len(features)} features and an intercept")
    return {"(intercept)": float(values[0]), **{name: float(w) for name, w in zip(features, values[1:], strict=False)}}


def logistic_objective(
    x: np.ndarray, y: np.ndarray, coefficients: Mapping[str, float], names: Sequence[str], alpha: float
) -> float:
    """(1/m)·Σ(log(1 + e^η) − y·η) + α·||w||₁ with η = Xw + b (the intercept unpenalised)."""
    w = np.array([coefficients[n] for n in names], dtype=np.float64)
    eta = x @ w + float(coefficients["(intercept)"])
    return float(np.mean(np.logaddexp(0.0, eta) - y * eta) + alpha * np.abs(w).sum())


def lasso_objective(
    x: np.ndarray, y: np.ndarray, coefficients: Mapping[str, float], names: Sequence[str], alpha: float
) -> float:
    """(1/2m)·||y − Xw − b||² + α·||w||₁ (scikit-learn's Lasso)."""
    w = np.array([coefficients[n] for n in names], dtype=np.float64)
    residual = y - x @ w - float(coefficients["(intercept)"])
    return float(0.5 * np.mean(residual**2) + alpha * np.abs(w).sum())


OBJECTIVES = {"lasso": lasso_objective, "logistic": logistic_objective}


def objective_gap(
    model: str, data: StudyData, alpha: float, coefficients: Mapping[str, float], reference: Mapping[str, float]
) -> float:
    """(f(w) − f(w_ref)) / f(w_ref): the model's objective on the plaintext join (as the owners'
    files hold it) relative to scikit-learn's optimum."""
    names, x, y = reference_join(data)
    x, y = np.round(x, CSV_DECIMALS), np.round(y, CSV_DECIMALS)
    objective = OBJECTIVES[model]
    best = objective(x, y, reference, names, alpha)
    return (objective(x, y, coefficients, names, alpha) - best) / best


def run_tno(
    python: Path, data: StudyData, reference: Mapping[str, float], alpha: float, root: Path, model: str = "lasso"
) -> dict[str, Any]:
    if data.insurer.target is None:
        raise BenchError("the generated insurer table has no target")
    inputs = {
        "alice": write_tno_input(data.insurer, root / "alice.csv"),
        "bob": write_tno_input(data.hospital, root / "bob.csv"),
    }
    ports = free_ports(6)  # three for TNO's HTTP pools, three consecutive for MPyC
    join_ports, mpc_base = ports[:3], ports[3]
    config = {
        "join_ports": dict(zip(ROLES, join_ports, strict=False)),
        "mpc_base_port": mpc_base,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "paillier_bits": TNO_PAILLIER_BITS,
        "precision": TNO_PRECISION,
        "alpha": alpha,
        "tolerance": TNO_TOLERANCE,
        "max_iterations": TNO_MAX_ITERATIONS,
        "target_index": len(data.insurer.columns),
        "model": model,
    }
    config_path = root / "tno-config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, **SINGLE_THREAD_ENV}
    started = time.time()
    processes = {}
    for role in ROLES:
        with (root / f"{role}.log").open("wb") as log:
            processes[role] = subprocess.Popen(
                [str(python), "-I", str(PARTY_SCRIPT), str(config_path), role],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=root,
            )
    outputs: dict[str, dict[str, Any]] = {}
    try:
        for role, process in processes.items():
            out, _ = process.communicate(timeout=max(1.0, started + TIMEOUT_S - time.time()))
            lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
            if process.returncode != 0 or not lines:
                raise TnoUnavailable(
                    f"TNO party {role} exited with {process.returncode}: {_tail(root / f'{role}.log')}"
                )
            outputs[role] = json.loads(lines[-1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    owners = [outputs["alice"], outputs["bob"]]
    revealed_at = max(o["revealed"] for o in owners)
    join_done = max(o["join_done"] for o in owners)
    coefficients = tno_coefficients(
        outputs["alice"]["columns"], data.insurer.target.name, outputs["alice"]["coefficients"]
    )
    return {
        "joined": outputs["alice"]["joined"],
        "total_s": round(revealed_at - started, 3),
        "join_s": round(join_done - started, 3),
        "lasso_s": round(revealed_at - join_done, 3),
        **coefficient_errors(coefficients, reference),
        "objective_gap": objective_gap(model, data, alpha, coefficients, reference),
        "coefficients": coefficients,
        "solver": f"{TNO_SOLVERS[model]}, tolerance {TNO_TOLERANCE}, at most {TNO_MAX_ITERATIONS} iterations",
    }


def compare(
    records: int, features: int, alpha: float, workdir: Path | None, venv: Path = VENV, model: str = "lasso"
) -> dict[str, Any]:
    if model not in MODELS:
        raise BenchError(f"--compare-tno compares {' or '.join(MODELS)}, not {model!r}")
    result: dict[str, Any] = {
        "model": model,
        "records": records,
        "features": features,
        "alpha": alpha,
        "load_1m_before": round(os.getloadavg()[0], 2),
    }
    # The same generated data as bench_all's (the generators are seeded).
    data, _, reference = study_setup(model, make_study_data(records, overlap=OVERLAP, features=features), alpha)
    ours = bench_all(records, features, alpha, workdir=workdir / "riskmesh" if workdir else None, model=model)
    result["riskmesh"] = {
        "joined": ours["joined"],
        "total_s": ours["process_start_to_result_s"],
        "run_s": ours["total_s"],
        "join_s": ours["join_s"],
        "reshare_s": ours["reshare_s"],
        "lasso_s": ours["lasso_s"],
        "max_abs_coef_diff": ours["max_abs_coef_diff"],
        "rel_coef_diff": ours["rel_coef_diff"],
        "intercept_abs_diff": ours.get("intercept_abs_diff"),
        "objective_gap": objective_gap(model, data, alpha, ours["coefficients"], reference),
        "load_1m_after": round(os.getloadavg()[0], 2),
    }
    venv = venv.resolve()
    try:
        python = ensure_venv(venv, venv.parent / "tno-install.log")
        check_imports(python)
        with work_directory(workdir / "tno" if workdir else None, "riskmesh-tno-") as root:
            result["tno"] = run_tno(python, data, reference, alpha, root, model)
    except TnoUnavailable as exc:
        result["tno"] = {"ran": False, "why": str(exc)}
        result["load_1m_after"] = round(os.getloadavg()[0], 2)
        return result
    result["tno_over_riskmesh"] = round(result["tno"]["total_s"] / result["riskmesh"]["total_s"], 1)
    result["load_1m_after"] = round(os.getloadavg()[0], 2)
    result["reference"] = reference
    return result


def print_table(result: Mapping[str, Any]) -> None:
    tno, ours = result.get("tno", {}), result["riskmesh"]
    print(
        f"{result.get('model', 'lasso')}: {result['records']} rows per owner × {result['features']} features, "
        f"alpha {result['alpha']}: process start → coefficients revealed; errors against scikit-learn"
    )
    print(f"{'':10} {'total s':>9} {'join s':>8} {'model s':>8} {'max|Δw|':>10} {'rel Δw':>10} {'obj gap':>10}")
    print(
        f"{'riskmesh':10} {ours['total_s']:9.2f} {ours['join_s'] + ours['reshare_s']:8.2f} {ours['lasso_s']:8.2f} "
        f"{ours['max_abs_coef_diff']:10.2e} {ours['rel_coef_diff']:10.2e} {ours.get('objective_gap', 0.0):10.2e}"
    )
    if "total_s" in tno:
        print(
            f"{'TNO':10} {tno['total_s']:9.2f} {tno['join_s']:8.2f} {tno['lasso_s']:8.2f} "
            f"{tno['max_abs_coef_diff']:10.2e} {tno['rel_coef_diff']:10.2e} {tno.get('objective_gap', 0.0):10.2e}"
        )
        print(f"TNO / riskmesh = {result['tno_over_riskmesh']}×")
    else:
        print(f"TNO did not run: {tno.get('why')}")


def result_path(model: str) -> Path:
    """Where a comparison is saved for the sweep's README (one file per model)."""
    return RESULT_PATH if model == "lasso" else RESULT_PATH.with_name(f"tno-compare-{model}.json")


def compare_tno(records: int, features: int, alpha: float, workdir: Path | None, model: str = "lasso") -> int:
    """The CLI entry: run both, print the table, save and print the JSON line."""
    try:
        result = compare(records, features, alpha, workdir, model=model)
    except BenchError as exc:
        print(json.dumps({"ok": False, "mode": "compare-tno", "model": model, "error": str(exc)}), flush=True)
        return 1
    print_table(result)
    path = result_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=2) + "\n")
    ran = "total_s" in result.get("tno", {})
    print(json.dumps({"ok": ran, "mode": "compare-tno", **result}), flush=True)
    return 0 if ran else 1
