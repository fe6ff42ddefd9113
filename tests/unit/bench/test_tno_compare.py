"""`riskmesh bench --compare-tno`'s pure parts: the logistic study set-up, the objectives and
their gap to scikit-learn's optimum, the printed table and the JSON line last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from riskmesh.v1 import common_pb2
from services.bench import tno_compare
from services.bench.full_bench import OVERLAP, BenchError, study_setup
from services.bench.tno_compare import (
    compare,
    lasso_objective,
    logistic_objective,
    objective_gap,
    print_table,
    result_path,
)
from services.testkit.synthetic import make_study_data, reference_join


@pytest.fixture(scope="module")
def logistic_study() -> tuple:
    return study_setup("logistic", make_study_data(400, overlap=OVERLAP, features=6), 0.01)


def test_logistic_setup_fits_a_binary_outcome_with_the_l1_penalty(logistic_study: tuple) -> None:
    data, spec, reference = logistic_study
    assert spec.model.kind == common_pb2.MODEL_KIND_LOGISTIC and spec.model.l1_ratio == 1.0
    assert list(spec.model.alphas) == [0.01]
    names, _, y = reference_join(data)
    assert set(np.unique(y)) == {0.0, 1.0}
    assert set(reference) == {*names, "(intercept)"}
    # The same seeded data as bench_all builds for itself.
    again, _, _ = study_setup("logistic", make_study_data(400, overlap=OVERLAP, features=6), 0.01)
    assert np.array_equal(again.insurer.values, data.insurer.values)


def test_logistic_objective_is_the_mean_log_loss_plus_the_l1_norm() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = np.array([1.0, 0.0, 1.0])
    coefficients = {"a": 0.5, "b": -0.25, "(intercept)": 0.1}
    eta = x @ np.array([0.5, -0.25]) + 0.1
    loss = np.mean([np.log1p(np.exp(e)) - t * e for e, t in zip(eta, y, strict=True)])
    got = logistic_objective(x, y, coefficients, ["a", "b"], 0.2)
    assert got == pytest.approx(loss + 0.2 * 0.75, rel=1e-14)
    # The intercept is not penalised.
    assert logistic_objective(x, y, {**coefficients, "(intercept)": 0.0}, ["a", "b"], 0.0) == pytest.approx(
        np.mean(np.log1p(np.exp(eta - 0.1)) - y * (eta - 0.1))
    )


def test_lasso_objective_is_scikit_learns() -> None:
    x = np.array([[1.0], [2.0]])
    y = np.array([1.0, 3.0])
    assert lasso_objective(x, y, {"a": 1.0, "(intercept)": 0.0}, ["a"], 0.5) == pytest.approx(0.25 + 0.5)


def test_objective_gap_is_zero_at_the_reference_and_grows_with_shrunk_coefficients(logistic_study: tuple) -> None:
    data, _, reference = logistic_study
    assert objective_gap("logistic", data, 0.01, reference, reference) == 0.0
    # What TNO's run was reported to do at 1,000 × 10: coefficients about 6× too small.
    shrunk = {k: (v if k == "(intercept)" else v / 6) for k, v in reference.items()}
    assert objective_gap("logistic", data, 0.01, shrunk, reference) > 0.05
    # scikit-learn's answer is the optimum: nudging any coefficient does not lower the objective.
    for name in reference:
        for step in (-1e-3, 1e-3):
            nudged = {**reference, name: reference[name] + step}
            assert objective_gap("logistic", data, 0.01, nudged, reference) > -1e-9


def test_compare_refuses_models_tno_cannot_fit() -> None:
    with pytest.raises(BenchError, match="lasso or logistic"):
        compare(400, 6, 0.01, None, model="svm")


def test_results_are_saved_per_model() -> None:
    assert result_path("lasso") == tno_compare.RESULT_PATH
    assert result_path("logistic").name == "tno-compare-logistic.json"
    assert result_path("logistic").parent == tno_compare.RESULT_PATH.parent


def _measured() -> dict:
    side = {"join_s": 3.0, "max_abs_coef_diff": 1e-9, "rel_coef_diff": 2e-10, "objective_gap": 1e-12}
    return {
        "model": "logistic",
        "records": 1000,
        "features": 10,
        "alpha": 0.01,
        "load_1m_before": 2.0,
        "riskmesh": {**side, "total_s": 20.0, "reshare_s": 2.0, "lasso_s": 10.0},
        "tno": {
            **side,
            "total_s": 600.0,
            "lasso_s": 590.0,
            "rel_coef_diff": 0.8,
            "max_abs_coef_diff": 0.5,
            "objective_gap": 0.55,
            "solver": "Logistic(...)",
        },
        "tno_over_riskmesh": 30.0,
        "load_1m_after": 3.0,
    }


def test_table_shows_errors_and_objective_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(_measured())
    out = capsys.readouterr().out
    assert out.startswith("logistic: 1000 rows per owner × 10 features, alpha 0.01")
    assert "obj gap" in out and "5.50e-01" in out and "1.00e-12" in out
    assert "TNO / riskmesh = 30.0×" in out


def test_cli_entry_saves_the_result_and_prints_the_json_line_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tno_compare, "RESULT_PATH", tmp_path / "tno-compare.json")
    monkeypatch.setattr(tno_compare, "compare", lambda *args, **kwargs: _measured())
    assert tno_compare.compare_tno(1000, 10, 0.01, None, "logistic") == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["ok"] is True and last["mode"] == "compare-tno" and last["model"] == "logistic"
    assert last["tno_over_riskmesh"] == 30.0 and last["tno"]["objective_gap"] == 0.55
    saved = json.loads((tmp_path / "tno-compare-logistic.json").read_text())
    assert saved["tno"]["rel_coef_diff"] == 0.8 and "measured_at" in saved


def test_cli_entry_reports_a_tno_side_that_did_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tno_compare, "RESULT_PATH", tmp_path / "tno-compare.json")
    failed = {**_measured(), "tno": {"ran": False, "why": "pip failed"}}
    del failed["tno_over_riskmesh"]
    monkeypatch.setattr(tno_compare, "compare", lambda *args, **kwargs: failed)
    assert tno_compare.compare_tno(1000, 10, 0.01, None, "logistic") == 1
    out = capsys.readouterr().out
    assert "TNO did not run: pip failed" in out
    assert json.loads(out.strip().splitlines()[-1])["ok"] is False
