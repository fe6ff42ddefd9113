"""The sweep's pure parts: the plan, exponent fitting, CSV rows and files, the README."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import services.bench.sweep as sweep_module
from services.bench.sweep import (
    CSV_COLUMNS,
    LATENCY_MS,
    Point,
    csv_row,
    exponents,
    figure,
    fit_exponent,
    large_rows,
    plan,
    read_csv,
    readme,
    render,
    tno_section,
    write_csv,
)


def _record(total: float, records: int) -> dict:
    return {
        "joined": records // 2,
        "join_s": total / 2,
        "reshare_s": total / 4,
        "lasso_s": total / 4,
        "total_s": total,
        "iterations": 40,
        "nonzero": 2,
        "max_abs_coef_diff": 1e-8,
        "rel_coef_diff": 5e-9,
        "bytes_sent": 1000 * records,
        "peak_rss_mb": 80.0,
        "load_1m_before": 0.1,
        "peak_rss_mb_by_org": {"insurer": 500.0, "hospital": 501.0, "helper": 300.0},
        "total_s_runs": [total, total * 1.1, total * 0.9],
    }


def test_fit_exponent_recovers_a_power_law() -> None:
    xs = [1_000, 2_500, 5_000, 10_000, 100_000]
    k, c = fit_exponent(xs, [3.0 * x**1.5 for x in xs])
    assert k == pytest.approx(1.5, abs=1e-12)
    assert c == pytest.approx(3.0, rel=1e-9)


def test_fit_exponent_is_least_squares_on_log_log() -> None:
    xs, ys = [1.0, 10.0, 100.0], [1.0, 20.0, 100.0]
    k, _ = fit_exponent(xs, ys)
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / 3, sum(ly) / 3
    covariance = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    assert k == pytest.approx(covariance / sum((a - mx) ** 2 for a in lx))


def test_fit_exponent_flat_and_refusals() -> None:
    assert fit_exponent([1, 2, 4], [5, 5, 5])[0] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        fit_exponent([10, 10], [1, 2])
    with pytest.raises(ValueError):
        fit_exponent([10, 20], [0, 0])  # no positive times: nothing to fit


def test_full_plan_matches_the_issue() -> None:
    points = plan("full")
    records = [p for p in points if p.sweep == "records"]
    assert [p.records for p in records] == [1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000]
    assert {p.features for p in records} == {10}
    assert [p.repeat for p in records] == [3, 3, 3, 3, 1, 1, 1]
    features = [p for p in points if p.sweep == "features"]
    assert [(p.records, p.features, p.repeat) for p in features] == [(10_000, 5, 3), (10_000, 20, 3), (10_000, 50, 3)]


def test_full_plan_has_the_collinear_curve() -> None:
    collinear = [p for p in plan("full") if p.sweep == "collinear"]
    assert [(p.records, p.features, p.repeat) for p in collinear] == [
        (1_000, 30, 1),
        (2_500, 30, 1),
        (5_000, 30, 1),
        (10_000, 30, 1),
    ]


def test_collinear_rows_carry_the_certificate_and_stay_out_of_the_fits(tmp_path: Path) -> None:
    lasso = {
        "records": 1_000,
        "lasso_s": 2.5,
        "iterations": 25,
        "nonzero": 9,
        "max_abs_coef_diff": 1e-9,
        "rel_coef_diff": 1e-10,
        "peak_rss_mb": 90.0,
        "load_1m_before": 0.2,
        "converged": True,
        "objective_gap": -1e-16,
        "max_pred_diff": 3e-10,
        "mpc_bytes_sent": 5_000_000,
        "lasso_s_runs": [2.5],
    }
    rows = [csv_row(Point("records", n, 10, 1), _record(0.002 * n, n)) for n in (1_000, 10_000)]
    rows.append(csv_row(Point("collinear", 1_000, 30, 1), lasso))
    saved = read_csv(write_csv(tmp_path / "r.csv", rows))
    assert saved[2]["converged"] == "True" and saved[2]["total_s"] == "" and saved[2]["bytes_sent"] == "5000000"
    assert set(exponents(saved)) == {"records"}
    text = readme(
        saved,
        {
            "nproc": 2,
            "cpu": "x",
            "ram_gib": 8,
            "kernel": "k",
            "python": "3.11",
            "commit": "c",
            "load_start": 0.1,
            "load_end": 0.2,
            "elapsed_min": 1,
            "started": "now",
            "repeats_note": "n",
        },
        "cmd",
        None,
    )
    assert "## Ill-conditioned design" in text and "| 1,000 | 30 | 2.50 | 25 | True |" in text


def test_quick_plan_is_small() -> None:
    points = plan("quick")
    assert all(p.repeat == 1 and p.records <= 5_000 for p in points)


def test_csv_round_trip_and_failed_rows(tmp_path: Path) -> None:
    ok = csv_row(Point("records", 1_000, 10, 3), _record(4.0, 1_000))
    failed = csv_row(Point("records", 2_500, 10, 3), None, "BenchError: run failed")
    path = write_csv(tmp_path / "out" / "results.csv", [ok, failed])
    rows = read_csv(path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["ok"] == "True" and float(rows[0]["total_s"]) == 4.0 and rows[0]["peak_rss_mb_hospital"] == "501.0"
    assert rows[0]["total_s_runs"] == "4.000;4.400;3.600"
    assert rows[1]["ok"] == "False" and rows[1]["total_s"] == "" and rows[1]["error"] == "BenchError: run failed"


def test_exponents_per_sweep_include_the_shared_point(tmp_path: Path) -> None:
    rows = [csv_row(Point("records", n, 10, 1), _record(0.002 * n, n)) for n in (1_000, 10_000, 100_000)]
    for d in (5, 20):
        record = _record(0.002 * 10_000 * (d / 10) ** 2, 10_000)
        record["bytes_sent"] = 10_000_000 * (d / 10) ** 2
        rows.append(csv_row(Point("features", 10_000, d, 1), record))
    saved = read_csv(write_csv(tmp_path / "r.csv", rows))
    fits = exponents(saved)
    assert fits["records"]["total_s"] == pytest.approx(1.0) and fits["records"]["bytes_sent"] == pytest.approx(1.0)
    assert fits["features"]["total_s"] == pytest.approx(2.0) and fits["features"]["bytes_sent"] == pytest.approx(2.0)


def test_failed_points_are_left_out_of_fits(tmp_path: Path) -> None:
    rows = [
        csv_row(Point("records", 1_000, 10, 1), _record(1.0, 1_000)),
        csv_row(Point("records", 2_000, 10, 1), None, "failed"),
    ]
    assert exponents(read_csv(write_csv(tmp_path / "r.csv", rows))) == {}


def test_readme_has_machine_table_memory_and_no_tno_figures_when_not_measured(tmp_path: Path) -> None:
    rows = read_csv(
        write_csv(
            tmp_path / "r.csv", [csv_row(Point("records", n, 10, 1), _record(0.002 * n, n)) for n in (1_000, 100_000)]
        )
    )
    info = {
        "nproc": 2,
        "cpu": "AMD EPYC",
        "ram_gib": 23.5,
        "kernel": "6",
        "python": "3.11",
        "commit": "abc",
        "load_start": 0.2,
        "load_end": 0.3,
        "elapsed_min": 12.0,
        "started": "today",
        "repeats_note": "one run",
    }
    text = readme(rows, info, "riskmesh bench --sweep full --out bench", None)
    assert "nproc 2, CPU AMD EPYC" in text and "load average (1 min) at the start 0.2" in text
    assert "| records | 100,000 | 10 |" in text
    assert "At 100,000 records per owner" in text and "- hospital: 501 MB" in text
    assert "Not measured in this checkout" in text
    assert "`riskmesh bench --sweep full --out bench`" in text


def test_tno_section_reports_why_tno_did_not_run() -> None:
    saved = {
        "records": 500,
        "features": 10,
        "alpha": 0.1,
        "riskmesh": {"total_s": 9.0},
        "tno": {"ran": False, "why": "pip failed"},
    }
    assert any("TNO did not run: pip failed" in line for line in tno_section(saved))


def _info() -> dict:
    return {
        "nproc": 2,
        "cpu": "x",
        "ram_gib": 8,
        "kernel": "k",
        "python": "3.11",
        "commit": "c0ffee1",
        "load_start": 0.1,
        "load_end": 0.2,
        "elapsed_min": 1,
        "started": "now",
        "repeats_note": "n",
    }


def _logistic_record(records: int) -> dict:
    """What `bench_lasso(..., model="logistic")` returns (no objective gap: a GLM's check is its coefficients)."""
    return {
        "records": records,
        "lasso_s": records / 100,
        "iterations": 8,
        "nonzero": 3,
        "max_abs_coef_diff": 1e-9,
        "rel_coef_diff": 2e-10,
        "peak_rss_mb": 120.0,
        "load_1m_before": 1.5,
        "load_1m_after": 1.7,
        "converged": False,
        "mpc_bytes_sent": 9_000_000,
        "lasso_s_runs": [records / 100],
    }


def _study_rows(tmp_path: Path) -> list[dict]:
    rows = [csv_row(Point("records", n, 10, 1), _record(0.002 * n, n)) for n in (1_000, 2_500, 10_000)]
    rows += [
        csv_row(Point("latency", n, 10, 1, LATENCY_MS), {**_record(0.004 * n, n), "load_1m_after": 2.5})
        for n in (1_000, 2_500)
    ]
    rows += [csv_row(Point("logistic", n, 10, 1), _logistic_record(n)) for n in (1_000, 2_500)]
    return read_csv(write_csv(tmp_path / "r.csv", rows))


def test_full_plan_adds_the_20ms_curve_and_the_logistic_curve() -> None:
    points = plan("full")
    latency = [p for p in points if p.sweep == "latency"]
    assert [(p.records, p.features, p.latency_ms) for p in latency] == [
        (n, 10, 20.0) for n in (1_000, 2_500, 5_000, 10_000)
    ]
    assert all(p.latency_ms == 0 for p in points if p.sweep != "latency")
    logistic = [p for p in points if p.sweep == "logistic"]
    assert [(p.records, p.features, p.repeat) for p in logistic] == [(n, 10, 1) for n in (1_000, 2_500, 5_000, 10_000)]
    # The 1M point is not in `make bench`: it has its own target.
    assert max(p.records for p in points) == 100_000


def test_large_plan_is_one_million_rows_per_owner() -> None:
    assert plan("large") == [Point("large", 1_000_000, 10, 1)]
    with pytest.raises(ValueError, match="sweep must be one of"):
        plan("huge")


def test_quick_plan_has_every_curve() -> None:
    assert {p.sweep for p in plan("quick")} == {"records", "features", "latency", "collinear", "logistic"}
    assert len([p for p in plan("quick") if p.sweep == "latency"]) >= 2  # a curve, not a point


def test_rows_carry_latency_load_after_and_no_gap_for_the_glm(tmp_path: Path) -> None:
    saved = _study_rows(tmp_path)
    delayed = [r for r in saved if r["sweep"] == "latency"]
    assert [r["latency_ms"] for r in delayed] == ["20.0", "20.0"] and delayed[0]["load_1m_after"] == "2.5"
    logistic = [r for r in saved if r["sweep"] == "logistic"][0]
    assert logistic["objective_gap"] == "" and logistic["converged"] == "False" and logistic["total_s"] == ""
    assert logistic["bytes_sent"] == "9000000" and logistic["load_1m_after"] == "1.7"
    # Only the loopback records sweep is fitted.
    assert set(exponents(saved)) == {"records"}


def test_readme_sets_20ms_beside_loopback_and_shows_the_logistic_curve(tmp_path: Path) -> None:
    text = readme(_study_rows(tmp_path), _info(), "riskmesh bench --sweep full --out bench", None)
    assert "commit c0ffee1" in text
    assert "| latency | 2,500 | 10 | 20 | 1 | 1,250 |" in text  # in the main table, with its latency
    assert "## 20 ms one way between organisations" in text
    assert "| 2,500 | 5.00 | 10.00 | 1.25 | 2.50 | 0.10 |" in text  # loopback beside 20 ms
    assert "## Logistic regression: the secure model alone" in text
    assert "| 2,500 | 10 | 25.00 | 8 | 3 | 2.0e-10 | 9.0 | 120 | 1.50 → 1.70 |" in text
    assert "load before → after" in text and "join = run start" in text  # loads and phase definitions


def test_large_point_is_read_from_its_own_directory_and_reported(tmp_path: Path) -> None:
    assert large_rows(tmp_path) == []
    big = csv_row(Point("large", 1_000_000, 10, 1), _record(2000.0, 1_000_000))
    write_csv(tmp_path / "large" / "results.csv", [big])
    rows = _study_rows(tmp_path) + large_rows(tmp_path)
    text = readme(rows, _info(), "riskmesh bench --sweep full --out bench", None)
    assert "| large | 1,000,000 | 10 | 0 | 1 | 500,000 |" in text
    assert "## 1,000,000 rows per owner" in text and "At 1,000,000 records per owner" in text


def _tno(model: str) -> dict:
    side = {"join_s": 3.0, "reshare_s": 1.0, "lasso_s": 10.0, "max_abs_coef_diff": 1e-9, "rel_coef_diff": 2e-10}
    return {
        "model": model,
        "records": 1000,
        "features": 10,
        "alpha": 0.01,
        "load_1m_before": 2.0,
        "load_1m_after": 3.0,
        "measured_at": "today",
        "riskmesh": {**side, "total_s": 20.0, "objective_gap": 1e-12},
        "tno": {**side, "total_s": 600.0, "objective_gap": 0.55, "solver": "Logistic(GD)"},
        "tno_over_riskmesh": 30.0,
    }


def test_tno_logistic_section_has_the_objective_gap(tmp_path: Path) -> None:
    lines = tno_section(_tno("logistic"))
    assert lines[0].startswith("`riskmesh bench --compare-tno --model logistic --records 1000`")
    assert any("| TNO packages | 600.00 |" in line and line.endswith("| 0.55 |") for line in lines)
    text = readme(_study_rows(tmp_path), _info(), "cmd", None, _tno("logistic"))
    assert "### Logistic regression" in text and "TNO / riskmesh: **30.0×** (Logistic(GD))." in text


def test_figure_is_written_with_every_curve(tmp_path: Path) -> None:
    path = figure(_study_rows(tmp_path), tmp_path / "fig" / "figure4.png", _tno("lasso"), _tno("logistic"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_figure_of_a_sweep_whose_every_point_failed_is_still_written(tmp_path: Path) -> None:
    # make bench-large's one point failing must leave its CSV and an honest figure, not a matplotlib error.
    failed = csv_row(Point("large", 1_000_000, 10, 1), None, "BenchError: run failed")
    path = figure([{k: str(v) for k, v in failed.items()}], tmp_path / "figure4.png", None)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_rewrites_the_readme_with_a_large_point_measured_after_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_module, "load_tno", lambda model="lasso": None)
    out = tmp_path / "bench"
    assert render(out) == 1  # nothing to render yet
    write_csv(out / "results.csv", _study_rows(tmp_path))
    (out / "sweep-info.json").write_text(
        json.dumps({**_info(), "command": "riskmesh bench --sweep full", "sweep": "full"})
    )
    assert render(out) == 0
    assert "1,000,000" not in (out / "README.md").read_text()
    large = csv_row(Point("large", 1_000_000, 10, 1), _record(900.0, 1_000_000))
    write_csv(out / "large" / "results.csv", [large])
    assert render(out) == 0
    assert "1,000,000" in (out / "README.md").read_text() and (out / "figure4.png").stat().st_size > 10_000
