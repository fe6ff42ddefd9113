"""The benchmark sweeps behind `make bench` (full), `make bench-quick` (quick) and
`make bench-large` (large).

Full: the whole study (`--phase all`, services/bench/full_bench.py) at 1,000, 2,500,
5,000, 10,000, 25,000, 50,000 and 100,000 rows per owner with 10 features, and at 5,
20 and 50 features with 10,000 rows (10 features there is the records sweep's point):
the median of 3 runs up to 10,000 rows, one run above. The latency curve: the whole
study again at 1,000 to 10,000 rows per owner with every cross-organisation connection
delayed by 20 ms one way (`--latency-ms 20`, a user-space relay), one run each. Then two
curves of the secure model alone on dealt shares (`--phase lasso`,
services/bench/lasso_bench.py; x = joined rows), one run each: the collinear curve
(`--design collinear`, the ill-conditioned family, 30 features, with its iterations,
certificate and objective gap) and the logistic curve (`--model logistic`, L1, a yes/no
outcome, 10 features, against the exact optimum of the same objective). Every point
starts its own three organisations. Estimated duration on this 2-core machine when it
is quiet (`FULL_ESTIMATE_MIN`): ~20 minutes — records ~9, features ~4.5, latency ~2,
collinear ~1, logistic ~2 — from the quiet figures in the last session's note (10k × 10
whole study 18.3 s per run, ~10 s per point to start the organisations and set up the
study; the model-alone points' lasso_s plus ~7 s). Budget: 30 minutes; once the
sweep has used `CUT_AFTER_S` of it, the remaining points run once (the CSV's `repeat`
column and the README say so). A point whose run fails is retried once on fresh
organisations; the first failure stays in the CSV's `error` column and its directory
(configs, server logs, spans) under `.riskmesh/bench/sweep-work/`.

Large: one whole-study point at 1,000,000 rows per owner × 10 features, one run, no
retry (the join alone took ~30 minutes at that size under load), into its own directory
(`make bench-large` writes `bench/large/`); the full sweep's README and figure include
that point when `<out>/large/results.csv` exists.

Writes to `out`: `results.csv` (one row per point, with the 1-minute load before and
after it), `figure4.png` (seconds against rows per owner, per phase, log axes — the
seed's Figure 4 — loopback and 20 ms, the two model-alone curves) and `README.md` (the
tables, the machine and commit, the command, the phase definitions, fitted growth
exponents of time and bytes in rows and in features, memory per party at the largest
size, and the TNO comparisons saved by `riskmesh bench --compare-tno [--model logistic]`,
when there are any).

Growth exponents: least squares of log y on log x (y ≈ c·x^k), over the points of one
sweep.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.bench.full_bench import BenchError, bench_all
from services.bench.lasso_bench import bench_lasso
from services.bench.tno_compare import result_path as tno_result_path

SWEEPS = ("full", "quick", "large")
INFO_FILE = "sweep-info.json"  # the machine, loads and times of the last sweep written to a directory
BUDGET_S = 30 * 60.0
FULL_ESTIMATE_MIN = 20
WORK_DIR = Path(".riskmesh/bench/sweep-work")
CUT_AFTER_S = 20 * 60.0
ALPHA = 0.1
ORGS = ("insurer", "hospital", "helper")
PHASE_COLUMNS = ("join_s", "reshare_s", "lasso_s", "total_s")
CSV_COLUMNS = (
    "sweep",
    "records",
    "features",
    "latency_ms",
    "repeat",
    "ok",
    "joined",
    "join_s",
    "reshare_s",
    "lasso_s",
    "total_s",
    "iterations",
    "nonzero",
    "max_abs_coef_diff",
    "rel_coef_diff",
    "bytes_sent",
    "peak_rss_mb",
    "peak_rss_mb_insurer",
    "peak_rss_mb_hospital",
    "peak_rss_mb_helper",
    "total_s_runs",
    "load_1m_before",
    "load_1m_after",
    "converged",
    "objective_gap",
    "max_pred_diff",
    "error",
)
COLLINEAR_FEATURES = 30
LATENCY_MS = 20.0
LARGE_RECORDS = 1_000_000
#: Sweeps of the whole study (join, reshare, model through the gateways) …
WHOLE_STUDY = ("records", "features", "latency", "large")
#: … and of the secure model alone on dealt shares (x = joined rows).
MODEL_ALONE = ("collinear", "logistic")


@dataclass(frozen=True)
class Point:
    sweep: str  # one of WHOLE_STUDY or MODEL_ALONE
    records: int  # whole study: rows per owner; model alone: joined rows
    features: int
    repeat: int
    latency_ms: float = 0.0


def plan(sweep: str) -> list[Point]:
    """The points of a sweep ("full", "quick" or "large"), in running order."""
    if sweep == "large":
        return [Point("large", LARGE_RECORDS, 10, 1)]
    if sweep == "quick":
        return (
            [Point("records", n, 10, 1) for n in (1_000, 2_500, 5_000)]
            + [Point("features", 2_500, d, 1) for d in (5, 20)]
            + [Point("latency", n, 10, 1, LATENCY_MS) for n in (1_000, 2_500)]
            + [Point("collinear", 1_000, COLLINEAR_FEATURES, 1)]
            + [Point("logistic", 1_000, 10, 1)]
        )
    if sweep != "full":
        raise ValueError(f"sweep must be one of {', '.join(SWEEPS)}, got {sweep!r}")
    records = [
        Point("records", n, 10, 3 if n <= 10_000 else 1) for n in (1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000)
    ]
    latency = [Point("latency", n, 10, 1, LATENCY_MS) for n in (1_000, 2_500, 5_000, 10_000)]
    collinear = [Point("collinear", n, COLLINEAR_FEATURES, 1) for n in (1_000, 2_500, 5_000, 10_000)]
    logistic = [Point("logistic", n, 10, 1) for n in (1_000, 2_500, 5_000, 10_000)]
    return records + [Point("features", 10_000, d, 3) for d in (5, 20, 50)] + latency + collinear + logistic


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(k, c) of the least-squares fit of log y = log c + k·log x; needs two distinct x > 0, y > 0."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=False) if x > 0 and y > 0]
    if len({p[0] for p in pairs}) < 2:
        raise ValueError("need at least two distinct positive x values with positive y")
    mean_x = sum(p[0] for p in pairs) / len(pairs)
    mean_y = sum(p[1] for p in pairs) / len(pairs)
    sxx = sum((p[0] - mean_x) ** 2 for p in pairs)
    sxy = sum((p[0] - mean_x) * (p[1] - mean_y) for p in pairs)
    k = sxy / sxx
    return k, math.exp(mean_y - k * mean_x)


def csv_row(point: Point, record: Mapping[str, Any] | None, error: str = "") -> dict[str, Any]:
    """One results.csv row (empty cells where a failed point has no figure)."""
    row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
    row.update(
        {
            "sweep": point.sweep,
            "records": point.records,
            "features": point.features,
            "latency_ms": point.latency_ms,
            "repeat": point.repeat,
            "ok": record is not None,
            "error": error,
        }
    )
    if record is not None and point.sweep in MODEL_ALONE:  # the secure model alone: no join phases
        for key in (
            "lasso_s",
            "iterations",
            "nonzero",
            "max_abs_coef_diff",
            "rel_coef_diff",
            "peak_rss_mb",
            "load_1m_before",
            "load_1m_after",
            "converged",
            "objective_gap",  # the Lasso only: a GLM's check is its coefficients
            "max_pred_diff",
        ):
            row[key] = record.get(key, "")
        row["joined"] = record["records"]
        row["bytes_sent"] = record["mpc_bytes_sent"]
        row["total_s_runs"] = ";".join(f"{t:.3f}" for t in record["lasso_s_runs"])
    elif record is not None:
        for key in (
            "joined",
            *PHASE_COLUMNS,
            "iterations",
            "nonzero",
            "max_abs_coef_diff",
            "rel_coef_diff",
            "bytes_sent",
            "peak_rss_mb",
            "load_1m_before",
            "load_1m_after",
        ):
            row[key] = record.get(key, "")
        for org in ORGS:
            row[f"peak_rss_mb_{org}"] = record["peak_rss_mb_by_org"].get(org, "")
        row["total_s_runs"] = ";".join(f"{t:.3f}" for t in record["total_s_runs"])
    return row


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def exponents(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Fitted exponents of time per phase and of bytes, in records (d = 10) and in features."""
    out: dict[str, dict[str, float]] = {}
    for sweep, axis in (("records", "records"), ("features", "features")):
        points = [
            r
            for r in rows
            if str(r["ok"]) == "True" and (r["sweep"] == sweep or (sweep == "features" and _is_shared_point(r, rows)))
        ]
        if len({float(r[axis]) for r in points}) < 2:
            continue
        fits = {}
        for column in (*PHASE_COLUMNS, "bytes_sent"):
            fits[column] = round(
                fit_exponent([float(r[axis]) for r in points], [float(r[column]) for r in points])[0], 2
            )
        out[sweep] = fits
    return out


def _is_shared_point(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bool:
    """The records sweep's point at the features sweep's row count (d = 10) belongs to both."""
    feature_records = {str(r["records"]) for r in rows if r["sweep"] == "features"}
    return row["sweep"] == "records" and str(row["records"]) in feature_records and str(row["features"]) == "10"


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


PHASE_LABELS = {
    "join_s": "join (keys, hashing, encryption, upload)",
    "reshare_s": "reshare (match, mask, deliver, decrypt)",
    "lasso_s": "secure Lasso (input, Gram, iterations, reveal)",
    "total_s": "total (StartRun → result)",
}
PHASE_STYLES = {
    "join_s": ("o", "tab:blue"),
    "reshare_s": ("s", "tab:orange"),
    "lasso_s": ("^", "tab:green"),
    "total_s": ("D", "tab:red"),
}


def _ok_points(rows: Sequence[Mapping[str, Any]], sweeps: Sequence[str]) -> list[Mapping[str, Any]]:
    return sorted((r for r in rows if r["sweep"] in sweeps and str(r["ok"]) == "True"), key=lambda r: int(r["records"]))


def figure(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    tno: Mapping[str, Any] | None,
    tno_logistic: Mapping[str, Any] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7))
    loopback = _ok_points(rows, ("records", "large"))
    for column in PHASE_COLUMNS:
        marker, colour = PHASE_STYLES[column]
        ax.plot(
            [int(r["records"]) for r in loopback],
            [float(r[column]) for r in loopback],
            marker + "-",
            color=colour,
            label=PHASE_LABELS[column] + ", loopback",
            linewidth=2.2 if column == "total_s" else 1.4,
        )
    delayed = _ok_points(rows, ("latency",))
    for column in ("lasso_s", "total_s"):
        marker, colour = PHASE_STYLES[column]
        ax.plot(
            [int(r["records"]) for r in delayed],
            [float(r[column]) for r in delayed],
            marker + ":",
            color=colour,
            mfc="white",
            label=PHASE_LABELS[column].split(" (")[0] + f", {LATENCY_MS:g} ms one way between organisations",
            linewidth=2.2 if column == "total_s" else 1.4,
        )
    for saved, marker, what in ((tno, "kx", "Lasso"), (tno_logistic, "k+", "logistic")):
        if saved and "total_s" in saved.get("tno", {}):
            ax.plot(
                [saved["records"]],
                [saved["tno"]["total_s"]],
                marker,
                markersize=11,
                mew=2,
                label=f"TNO packages, {what}, same machine ({saved['records']:,} rows, process start → coefficients)",
            )
    for sweep, style, colour, label in (
        (
            "collinear",
            "v--",
            "tab:purple",
            f"secure Lasso alone, collinear design ({COLLINEAR_FEATURES} features; x = joined rows)",
        ),
        ("logistic", "P--", "tab:brown", "secure L1 logistic regression alone (10 features; x = joined rows)"),
    ):
        alone = _ok_points(rows, (sweep,))
        if alone:
            ax.plot(
                [int(r["records"]) for r in alone],
                [float(r["lasso_s"]) for r in alone],
                style,
                color=colour,
                label=label,
            )
    if any(len(line.get_xdata()) for line in ax.get_lines()):
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:  # every point failed (the CSV's error column says why): an empty figure that says so
        ax.text(0.5, 0.5, "no point of this sweep succeeded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("records per data owner (half of them in the join), 10 features")
    ax.set_ylabel("seconds (loopback: median of 3 up to 10,000 records; other curves: one run)")
    ax.set_title("riskmesh: time against the number of records (cf. the seed's Figure 4)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_tno(model: str = "lasso") -> dict[str, Any] | None:
    path = tno_result_path(model)
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _fmt(value: Any, digits: int = 2) -> str:
    if value in ("", None):
        return "—"
    number = float(value)
    if abs(number) < 1e-3 and number != 0:
        return f"{number:.1e}"
    return f"{number:,.{digits}f}"


def readme(
    rows: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any],
    command: str,
    tno: Mapping[str, Any] | None,
    tno_logistic: Mapping[str, Any] | None = None,
) -> str:
    lines = [
        "# Benchmarks: the whole study, three organisations on one machine",
        "",
        f"Generated by `{command}` (what `make bench` / `make bench-quick` / `make bench-large` run; "
        "services/bench/sweep.py); do not edit by hand.",
        "",
        "Each whole-study point: `riskmesh bench --phase all --records N --features D [--latency-ms L]` — the "
        "insurer, the hospital and the helper as separate server processes (15 in all) over mTLS on localhost, every "
        "cross-organisation connection through a byte-counting relay (delaying each message by L ms one way for the "
        "`latency` sweep); the study proposed, approved and run through the gateways on generated data (N rows per "
        "owner, half of them in the join, D/5 non-zero true weights plus noise, Lasso alpha 0.1). Phase times "
        "come from the run's exported phase spans: join = run start → the last owner has hashed, encrypted and "
        "uploaded (the run's key pairs and randomness pools are made before the run, after the approvals or the "
        "previous run, and timed apart as `prepared_s`; they fall in join only when `used_prepared_keys` is false); "
        "reshare = → every org stores its shares (the helper's "
        "match and mask, delivery, decryption); lasso = → the last MPC phase ends (input, Gram, iterations, reveal); "
        "total = the client's StartRun → result in hand. `bytes` = TLS bytes all three organisations sent each "
        "other. `RSS` = the largest resident set of one process (server or MPC worker), sampled every 0.1 s. "
        "Coefficient error: max |w − w_sklearn| / max |w_sklearn| against scikit-learn's Lasso on the same "
        "plaintext join. `load` = the machine's 1-minute load average before and after the point.",
        "",
        "## Machine",
        "",
        f"- nproc {info['nproc']}, CPU {info['cpu']}, RAM {info['ram_gib']} GiB, kernel {info['kernel']}, "
        f"Python {info['python']}, commit {info['commit']}",
        f"- load average (1 min) at the start {info['load_start']}, at the end {info['load_end']} "
        "(each point's in the table: the machine is shared, and load above ~0.5 slows every figure); "
        f"the sweep took {info['elapsed_min']} min (started {info['started']})",
        f"- repeats: {info['repeats_note']}",
        "",
        "## Results",
        "",
        "| sweep | records | features | latency ms | runs | joined | join s | reshare s | lasso s | total s "
        "| iterations | rel coef diff | MB sent | largest RSS MB | load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in (r for r in rows if r["sweep"] not in MODEL_ALONE):
        head = f"| {r['sweep']} | {int(r['records']):,} | {r['features']} | {_fmt(r.get('latency_ms') or 0, 0)} "
        if str(r["ok"]) != "True":
            lines.append(f"{head}| {r['repeat']} | failed: {r['error']} ||||||||||")
            continue
        lines.append(
            f"{head}| {r['repeat']} | {int(r['joined']):,} "
            f"| {_fmt(r['join_s'])} | {_fmt(r['reshare_s'])} | {_fmt(r['lasso_s'])} | {_fmt(r['total_s'])} "
            f"| {r['iterations']} | {_fmt(r['rel_coef_diff'])} | {_fmt(float(r['bytes_sent']) / 1e6, 1)} "
            f"| {_fmt(r['peak_rss_mb'], 0)} | {_load(r)} |"
        )
    retried = [r for r in rows if str(r["ok"]) == "True" and r["error"]]
    if retried:
        lines += ["", "Points that succeeded on a second attempt (the first failure, kept for diagnosis):", ""]
        lines += [f"- {r['sweep']} {int(r['records']):,} × {r['features']}: {r['error']}" for r in retried]
    lines += ["", "![time against records](figure4.png)", ""]
    lines += latency_section(rows)
    lines += large_section(rows)
    lines += collinear_section(rows)
    lines += logistic_section(rows)
    lines += ["", "## Growth (least squares on log–log: time ≈ c·x^k)", ""]
    fits = exponents(rows)
    if fits:
        lines += ["| x | join | reshare | lasso | total | bytes sent |", "|---|---:|---:|---:|---:|---:|"]
        for sweep, fit in fits.items():
            label = "records (10 features)" if sweep == "records" else "features (at the features sweep's records)"
            lines.append(
                f"| {label} | {fit['join_s']} | {fit['reshare_s']} | {fit['lasso_s']} | {fit['total_s']} "
                f"| {fit['bytes_sent']} |"
            )
    else:
        lines.append("Too few successful points to fit.")
    lines += ["", "## Memory per party at the largest size", ""]
    largest = max(
        (r for r in rows if r["sweep"] in ("records", "large") and str(r["ok"]) == "True"),
        key=lambda r: int(r["records"]),
        default=None,
    )
    if largest is not None:
        lines.append(
            f"At {int(largest['records']):,} records per owner × {largest['features']} features "
            "(peak of the sum over each organisation's processes; "
            f"the largest single process {_fmt(largest['peak_rss_mb'], 0)} MB):"
        )
        lines.append("")
        lines += [f"- {org}: {_fmt(largest[f'peak_rss_mb_{org}'], 0)} MB" for org in ORGS]
    lines += ["", "## TNO packages, side by side", ""]
    lines += tno_section(tno)
    if tno_logistic is not None:
        lines += ["", "### Logistic regression", ""]
        lines += tno_section(tno_logistic)
    return "\n".join(lines) + "\n"


def _load(r: Mapping[str, Any]) -> str:
    return f"{_fmt(r['load_1m_before'])} → {_fmt(r.get('load_1m_after'))}"


def latency_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Loopback beside 20 ms one way, per records point both sweeps measured."""
    delayed = {int(r["records"]): r for r in _ok_points(rows, ("latency",))}
    loopback = {int(r["records"]): r for r in _ok_points(rows, ("records",))}
    shared = sorted(set(delayed) & set(loopback))
    if not shared:
        return []
    lines = [
        f"## {LATENCY_MS:g} ms one way between organisations",
        "",
        f"The whole study with every cross-organisation message delayed by {LATENCY_MS:g} ms one way (`--latency-ms "
        f"{LATENCY_MS:g}`; one run per point) beside loopback (the records sweep). The delay costs round trips: "
        "the MPC's rounds, not its arithmetic, decide the Lasso's time over a real network.",
        "",
        "| records | total s loopback | total s 20 ms | lasso s loopback | lasso s 20 ms | load before (20 ms) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in shared:
        a, b = loopback[n], delayed[n]
        lines.append(
            f"| {n:,} | {_fmt(a['total_s'])} | {_fmt(b['total_s'])} | {_fmt(a['lasso_s'])} | {_fmt(b['lasso_s'])} "
            f"| {_fmt(b['load_1m_before'])} |"
        )
    return [*lines, ""]


def large_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    points = [r for r in rows if r["sweep"] == "large"]
    if not points:
        return []
    return [
        f"## {LARGE_RECORDS:,} rows per owner",
        "",
        "The `large` rows above come from `make bench-large` (`riskmesh bench --sweep large --out bench/large`: one "
        "whole-study run, no retry); `large/README.md` gives that run's machine, commit and load.",
        "",
    ]


def logistic_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """`riskmesh bench --phase lasso --model logistic` per point."""
    points = [r for r in rows if r["sweep"] == "logistic"]
    if not points:
        return []
    lines = [
        "## Logistic regression: the secure model alone",
        "",
        "`riskmesh bench --phase lasso --model logistic --records N --features 10`: L1 logistic regression "
        "(alpha 0.01) of a yes/no outcome drawn from the generated target (services/testkit/outcomes.py); N joined "
        "rows dealt as the join leaves them, the three lasso servers only; Newton steps until a step is at most "
        "1e-3 (no certificate). Coefficient error: max |w − w*| / max |w*| against the exact optimum of the same "
        "objective on the plaintext join (services/testkit/glm_reference.fit_glm_exact; scikit-learn's "
        "LogisticRegression(C = 1/(m·α), l1_ratio = 1) solves the same objective).",
        "",
        "| joined rows | features | model s | Newton steps | non-zero | rel coef diff | MB sent | largest RSS MB "
        "| load before → after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in points:
        if str(r["ok"]) != "True":
            lines.append(f"| {int(r['records']):,} | {r['features']} | failed: {r['error']} |||||||")
            continue
        lines.append(
            f"| {int(r['records']):,} | {r['features']} | {_fmt(r['lasso_s'])} | {r['iterations']} | {r['nonzero']} "
            f"| {_fmt(r['rel_coef_diff'])} | {_fmt(float(r['bytes_sent']) / 1e6, 1)} | {_fmt(r['peak_rss_mb'], 0)} "
            f"| {_load(r)} |"
        )
    return [*lines, ""]


def collinear_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ill-conditioned design: `riskmesh bench --phase lasso --design collinear` per point."""
    points = [r for r in rows if r["sweep"] == "collinear"]
    if not points:
        return []
    lines = [
        "## Ill-conditioned design: the secure Lasso alone",
        "",
        f"`riskmesh bench --phase lasso --records N --features {COLLINEAR_FEATURES} --design collinear`: "
        "groups of three measurements correlating ≥ 0.99, units from 1e-3 to 1e3, a small-scale target "
        "(services/testkit/collinear.py), alpha = 1e-4 × alpha_max; N joined rows dealt as the join leaves them, "
        "the three lasso servers only. Objective gap: relative to scikit-learn's Lasso run to convergence on the "
        "same plaintext join; prediction difference: relative to the target's range.",
        "",
        "| joined rows | features | lasso s | iterations | certified | objective gap | max prediction diff "
        "| MB sent | load before → after |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in points:
        if str(r["ok"]) != "True":
            lines.append(f"| {int(r['records']):,} | {r['features']} | failed: {r['error']} |||||||")
            continue
        lines.append(
            f"| {int(r['records']):,} | {r['features']} | {_fmt(r['lasso_s'])} | {r['iterations']} "
            f"| {r['converged']} | {_fmt(r['objective_gap'])} | {_fmt(r['max_pred_diff'])} "
            f"| {_fmt(float(r['bytes_sent']) / 1e6, 1)} "
            f"| {_load(r)} |"
        )
    return [*lines, ""]


def tno_section(tno: Mapping[str, Any] | None) -> list[str]:
    if tno is None:
        return [
            "Not measured in this checkout: run `riskmesh bench --compare-tno [--model logistic]` "
            "(it saves .riskmesh/bench/tno-compare[-logistic].json, which the next sweep reports here)."
        ]
    model = tno.get("model", "lasso")
    ours, theirs = tno["riskmesh"], tno.get("tno", {})
    option = "" if model == "lasso" else f" --model {model}"
    head = (
        f"`riskmesh bench --compare-tno{option} --records {tno['records']}` on {tno.get('measured_at', '?')} "
        f"(load {tno.get('load_1m_before')} → {tno.get('load_1m_after')}): "
        f"{tno['records']:,} rows per owner × {tno['features']} features, {model}, alpha {tno['alpha']}; "
        "both timed from starting the parties' processes until the data owners hold the coefficients; "
        "coefficient error and objective gap (f − f*)/f* against scikit-learn on the same plaintext join."
    )
    if "total_s" not in theirs:
        return [head, "", f"TNO did not run: {theirs.get('why', 'no reason recorded')}"]
    return [
        head,
        "",
        "| | total s | join s | model s | max abs coef diff | rel coef diff | objective gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| riskmesh | {_fmt(ours['total_s'])} | {_fmt(ours['join_s'] + ours['reshare_s'])} | {_fmt(ours['lasso_s'])} "
        f"| {_fmt(ours['max_abs_coef_diff'])} | {_fmt(ours['rel_coef_diff'])} | {_fmt(ours.get('objective_gap'))} |",
        f"| TNO packages | {_fmt(theirs['total_s'])} | {_fmt(theirs['join_s'])} | {_fmt(theirs['lasso_s'])} "
        f"| {_fmt(theirs['max_abs_coef_diff'])} | {_fmt(theirs['rel_coef_diff'])} "
        f"| {_fmt(theirs.get('objective_gap'))} |",
        "",
        f"TNO / riskmesh: **{tno['tno_over_riskmesh']}×** ({theirs['solver']}).",
    ]


def measure(point: Point, directory: Path) -> dict[str, Any]:
    """The benchmark behind one point."""
    if point.sweep == "collinear":
        return bench_lasso(
            point.records, point.features, None, repeat=point.repeat, workdir=directory, design="collinear"
        )
    if point.sweep == "logistic":
        return bench_lasso(
            point.records, point.features, None, repeat=point.repeat, workdir=directory, model="logistic"
        )
    return bench_all(
        point.records, point.features, ALPHA, latency_ms=point.latency_ms, repeat=point.repeat, workdir=directory
    )


def run_point(point: Point, workdir: Path, attempts: int = 2) -> dict[str, Any]:
    """One point on freshly started organisations; a failed attempt is retried (the
    CSV's `error` column keeps the first failure) and its directory — configs, server
    logs, spans — is kept for diagnosis; a successful one is removed."""
    failures: list[str] = []
    label = f"{point.sweep:9} {point.records:>9,} × {point.features:<3}"
    for attempt in range(1, attempts + 1):
        directory = workdir.with_name(f"{workdir.name}-attempt{attempt}")
        shutil.rmtree(directory, ignore_errors=True)
        try:
            record = measure(point, directory)
        except (BenchError, OSError, RuntimeError, TimeoutError) as exc:
            failures.append(f"attempt {attempt}: {type(exc).__name__}: {exc} (kept in {directory})"[:400])
            print(f"{label} FAILED ({failures[-1]})", flush=True)
            continue
        shutil.rmtree(directory, ignore_errors=True)
        if point.sweep in MODEL_ALONE:
            gap = f", objective gap {record['objective_gap']:.1e}" if "objective_gap" in record else ""
            print(
                f"{label} runs {point.repeat}: model {record['lasso_s']:.2f} s, {record['iterations']} iterations, "
                f"rel coef diff {record['rel_coef_diff']:.1e}{gap}, load {record['load_1m_before']}",
                flush=True,
            )
        else:
            print(
                f"{label} runs {point.repeat}, {point.latency_ms:g} ms: total {record['total_s']:.2f} s "
                f"(join {record['join_s']:.2f}, reshare {record['reshare_s']:.2f}, lasso {record['lasso_s']:.2f}), "
                f"rel coef diff {record['rel_coef_diff']:.1e}, load {record['load_1m_before']}",
                flush=True,
            )
        return csv_row(point, record, "; ".join(failures))
    return csv_row(point, None, "; ".join(failures))


def run_sweep(sweep: str, out: Path) -> int:
    """Run every point of `sweep`, then write results.csv, figure4.png and README.md under `out`."""
    points = plan(sweep)
    started = time.perf_counter()
    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    load_start = round(os.getloadavg()[0], 2)
    command = f"riskmesh bench --sweep {sweep} --out {out}"
    estimate = f", estimated ~{FULL_ESTIMATE_MIN} min on a quiet machine" if sweep == "full" else ""
    print(
        f"sweep {sweep}: {len(points)} points{estimate}; load {load_start} at the start"
        + ("  (above 0.5: figures will be slower than on an idle machine)" if load_start > 0.5 else ""),
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    work = WORK_DIR.resolve()
    cut = False
    for point in points:
        if sweep == "full" and point.repeat > 1 and time.perf_counter() - started > CUT_AFTER_S:
            point = Point(point.sweep, point.records, point.features, 1, point.latency_ms)
            cut = True
        name = f"{point.sweep}-{point.records}x{point.features}"
        rows.append(run_point(point, work / name, attempts=1 if sweep == "large" else 2))
    elapsed = time.perf_counter() - started
    info = {
        **machine(),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "elapsed_min": round(elapsed / 60, 1),
        "started": started_at,
        "repeats_note": repeats_note(sweep, cut),
    }
    csv_path = write_csv(out / "results.csv", rows)
    (out / INFO_FILE).write_text(json.dumps({**info, "command": command, "sweep": sweep}, indent=1) + "\n")
    saved = read_csv(csv_path)
    write_report(out, saved, info, command, sweep)
    print(
        json.dumps(
            {
                "ok": all(r["ok"] for r in rows),
                "sweep": sweep,
                "points": len(rows),
                "elapsed_s": round(elapsed, 1),
                "load_start": load_start,
                "load_end": info["load_end"],
                "out": str(out),
                "exponents": exponents(saved),
            }
        ),
        flush=True,
    )
    return 0 if all(r["ok"] for r in rows) else 1


def write_report(out: Path, saved: list[dict[str, str]], info: Mapping[str, Any], command: str, sweep: str) -> None:
    """figure4.png and README.md from a sweep's saved rows (the full sweep adds `<out>/large/` and TNO's runs)."""
    report = saved + large_rows(out) if sweep == "full" else saved
    tno, tno_logistic = load_tno("lasso"), load_tno("logistic")
    figure(report, out / "figure4.png", tno, tno_logistic)
    (out / "README.md").write_text(readme(report, info, command, tno, tno_logistic))


def render(out: Path) -> int:
    """`riskmesh bench --sweep render --out DIR`: rewrite DIR's figure and README from its saved results.csv
    and sweep info (e.g. after `make bench-large` or `--compare-tno` measured a point the sweep did not)."""
    csv_path, info_path = out / "results.csv", out / INFO_FILE
    if not csv_path.exists() or not info_path.exists():
        print(json.dumps({"ok": False, "error": f"{out} holds no sweep to render (results.csv and {INFO_FILE})"}))
        return 1
    info = json.loads(info_path.read_text())
    saved = read_csv(csv_path)
    write_report(out, saved, info, str(info["command"]), str(info["sweep"]))
    print(json.dumps({"ok": True, "rendered": str(out), "points": len(saved), "large": len(large_rows(out))}))
    return 0


def repeats_note(sweep: str, cut: bool) -> str:
    if sweep == "quick":
        return "one run per point (quick sweep)"
    if sweep == "large":
        return "one run, no retry (large sweep)"
    return "loopback: median of 3 runs up to 10,000 records, one run above; latency, collinear, logistic: one run" + (
        f"; the points after {CUT_AFTER_S / 60:.0f} minutes ran once to stay within the budget" if cut else ""
    )


def large_rows(out: Path) -> list[dict[str, str]]:
    """The 1,000,000-row point of `make bench-large`, when it has been measured (`<out>/large/results.csv`)."""
    path = out / "large" / "results.csv"
    return read_csv(path) if path.exists() else []
