"""Pure parts of the phase benchmarks: phase cuts from spans, medians, coefficient errors,
the lasso bench's share blocks and shares file, the TNO coefficient mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.bench.full_bench import BenchError, coefficient_errors, median_summary, phase_times
from services.bench.lasso_bench import party_blocks, read_shares, split_phases, write_shares
from services.bench.meshrun import TrafficCounter, cpu_delta
from services.bench.mpc_traffic import mpc_traffic
from services.bench.tno_compare import tno_coefficients
from services.testkit.dealer import decode
from services.testkit.synthetic import make_study_data
from services.tools.traces import SpanRow


def _span(org: str, phase: str, start: float, end: float) -> SpanRow:
    return SpanRow(org, "gateway", f"phase {phase}", phase, start, end, False)


def test_phase_times_cut_at_the_last_party() -> None:
    rows = [
        _span("insurer", "setup", 100.0, 100.5),
        _span("hospital", "setup", 100.1, 100.6),
        _span("helper", "setup", 100.0, 100.2),
        _span("insurer", "hashing_encryption", 100.5, 103.0),
        _span("hospital", "hashing_encryption", 100.6, 104.0),
        _span("helper", "intersection", 100.2, 106.0),
        _span("insurer", "resharing", 103.0, 105.5),
        _span("hospital", "resharing", 104.0, 106.0),
        _span("helper", "resharing", 106.0, 106.1),
        _span("insurer", "input", 105.5, 107.0),
        _span("hospital", "input", 106.0, 107.1),
        _span("helper", "input", 106.1, 107.2),
        _span("insurer", "gram", 107.0, 107.5),
        _span("insurer", "iterations", 107.5, 109.0),
        _span("insurer", "reveal", 109.0, 109.1),
        _span("hospital", "reveal", 109.0, 109.3),
        SpanRow("insurer", "gateway", "/riskmesh.v1.X/Y", "", 99.0, 120.0, False),
    ]
    times = phase_times(rows)
    assert times["join_s"] == pytest.approx(4.0)
    assert times["reshare_s"] == pytest.approx(2.1)
    assert times["lasso_s"] == pytest.approx(3.2)
    assert times["spans_wall_s"] == pytest.approx(9.3)
    assert times["lasso_phases_s"] == pytest.approx({"input": 1.1, "gram": 0.3, "iterations": 1.5, "reveal": 0.3})


def test_phase_times_refuse_an_incomplete_run() -> None:
    with pytest.raises(BenchError, match="MPC"):
        phase_times([_span("insurer", "hashing_encryption", 0.0, 1.0), _span("insurer", "resharing", 1.0, 2.0)])
    with pytest.raises(BenchError, match="no phase spans"):
        phase_times([])


def test_coefficient_errors() -> None:
    reference = {"a": 2.0, "b": -4.0, "c": 0.0, "(intercept)": 1.0}
    secure = {"a": 2.0 + 1e-6, "b": -4.0 - 2e-6, "c": 0.0, "(intercept)": 1.5}
    errors = coefficient_errors(secure, reference)
    assert errors["max_abs_coef_diff"] == pytest.approx(2e-6)
    assert errors["rel_coef_diff"] == pytest.approx(5e-7)
    assert errors["intercept_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(BenchError):
        coefficient_errors({"a": 1.0}, reference)


def test_median_summary_keeps_small_values_unrounded() -> None:
    runs = [
        {
            "total_s": 1.23456,
            "rel_coef_diff": 3e-9,
            "bytes": 10,
            "ok": True,
            "trace_id": "a",
            "by_org": {"x": 1, "y": 4},
        },
        {"total_s": 2.0, "rel_coef_diff": 1e-9, "bytes": 30, "ok": False, "trace_id": "b", "by_org": {"x": 3, "y": 2}},
        {"total_s": 3.0, "rel_coef_diff": 2e-9, "bytes": 20, "ok": True, "trace_id": "c", "by_org": {"x": 2, "y": 3}},
    ]
    summary = median_summary(runs)
    assert summary == {
        "total_s": 2.0,
        "rel_coef_diff": 2e-9,
        "bytes": 20,
        "ok": False,
        "trace_id": "a",
        "by_org": {"x": 2, "y": 3},
    }
    assert median_summary(runs[:1])["total_s"] == 1.235


def test_traffic_delta() -> None:
    counter = TrafficCounter()
    counter.add("insurer", 10)
    before = counter.snapshot()
    counter.add("insurer", 5)
    counter.add("helper", 7)
    assert TrafficCounter.delta(counter.snapshot(), before) == {"insurer": 5, "helper": 7}


def test_cpu_delta() -> None:
    assert cpu_delta({"helper": 3.0, "insurer": 10.456}, {"insurer": 4.0}) == {"helper": 3.0, "insurer": 6.46}


def test_mpc_traffic_from_the_lasso_servers_spans(tmp_path: Path) -> None:
    import json

    def span(org: str, run_id: str, counts: dict[str, int], name: str = "mpc traffic") -> str:
        attributes = {"riskmesh.run.id": run_id, **{f"riskmesh.mpc.{k}": v for k, v in counts.items()}}
        return json.dumps({"name": name, "attributes": attributes, "resource": {"attributes": {"riskmesh.org": org}}})

    lines = {
        "insurer": [
            span(
                "insurer",
                "r1",
                {"rounds.gram": 10, "messages.gram": 20, "rounds.other": 2, "messages.other": 2, "bytes.gram": 99},
            ),
            span("insurer", "r2", {"rounds.gram": 99, "messages.gram": 99}),
        ],
        "hospital": [
            span("hospital", "r1", {"rounds.gram": 12, "messages.gram": 24, "rounds.other": 1, "messages.other": 1}),
            span("hospital", "r1", {"rounds.gram": 50}, name="phase gram"),
        ],
    }
    for org, spans in lines.items():
        path = tmp_path / org / "spans" / f"{org}-lasso.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(spans) + "\n")
    assert mpc_traffic([tmp_path], "r1") == {
        "mpc_rounds": {"gram": 12, "other": 2, "total": 14},
        "mpc_messages": {"gram": 44, "other": 3, "total": 47},
    }
    assert mpc_traffic([tmp_path], "r3") == {"mpc_rounds": {}, "mpc_messages": {}}


def test_dealt_blocks_are_the_join_layout_and_sum_to_the_table(tmp_path: Path) -> None:
    data = make_study_data(40, overlap=1.0, features=4)
    blocks, x, y = party_blocks(data, np.random.default_rng(1))
    assert [b.columns for b in blocks["insurer"]] == [("x3", "x4")]
    assert [b.columns for b in blocks["hospital"]] == [("x1", "x2", "hospitalisation_days")]
    assert [b.columns for b in blocks["helper"]] == [("x1", "x2", "hospitalisation_days"), ("x3", "x4")]
    assert all(
        b.rows == 40 and b.value_bytes == 14 and (b.fractional_bits, b.value_bits, b.sigma_bits) == (32, 64, 40)
        for bs in blocks.values()
        for b in bs
    )
    # Column by column, the three parties' shares add up to the fixed-point encoding of (X, y).
    insurer_cols = np.array(blocks["hospital"][0].values, dtype=object) + np.array(
        blocks["helper"][0].values, dtype=object
    )
    hospital_cols = np.array(blocks["insurer"][0].values, dtype=object) + np.array(
        blocks["helper"][1].values, dtype=object
    )
    assert np.allclose(decode(insurer_cols), np.column_stack([x[:, :2], y]), atol=2**-31)
    assert np.allclose(decode(hospital_cols), x[:, 2:], atol=2**-31)
    # The shares file holds exactly the blocks.
    back = read_shares(write_shares(tmp_path / "s.bin", blocks["helper"]))
    assert [(b.columns, b.values) for b in back] == [(b.columns, b.values) for b in blocks["helper"]]
    assert (tmp_path / "s.bin").stat().st_mode & 0o777 == 0o600


def test_split_phases() -> None:
    starts = {"input": 10.5, "gram": 12.0, "iterations": 12.5, "reveal": 15.0, "setup": 1.0}
    assert split_phases(10.0, 15.25, starts) == {"input": 2.0, "gram": 0.5, "iterations": 2.5, "reveal": 0.25}


def test_tno_coefficients_map_intercept_first() -> None:
    got = tno_coefficients(["x1", "x2", "y", "x3"], "y", [0.5, 1.0, 2.0, 3.0])
    assert got == {"(intercept)": 0.5, "x1": 1.0, "x2": 2.0, "x3": 3.0}
    with pytest.raises(BenchError):
        tno_coefficients(["x1", "y"], "y", [1.0])


def test_accuracy_is_relative_to_the_optimum_and_the_target_range() -> None:
    from services.bench.lasso_bench import accuracy

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, 0.0, -2.0]) + rng.normal(size=200)
    reference = {"a": 0.9, "b": 0.0, "c": -1.9, "(intercept)": 0.1}
    same = accuracy(reference, reference, x, y, 0.05)
    assert same == {"objective_gap": 0.0, "max_pred_diff": 0.0}
    moved = accuracy({**reference, "(intercept)": 0.1 + 1e-3}, reference, x, y, 0.05)
    assert moved["max_pred_diff"] == pytest.approx(1e-3 / np.ptp(y))
    assert moved["objective_gap"] > 0
