"""K-fold cross-validation of the logistic and SVM fits (``secure_glm_cv``) against a plaintext CV.

The plaintext CV fits every fold × alpha with the exact solver (``glm_reference.fit_glm_exact``) on the
same contiguous folds, scores the held-out fold by the mean log-loss (logistic) or squared hinge (SVM),
and picks the first minimum of the summed curve, as the secure run does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from riskmesh.v1 import common_pb2
from services.bench.local_run import run_local
from services.lasso.core.params import ModelKind, RegressionSpec, SpecError, fold_bounds
from services.lasso.mpc.secure_glm_cv import secure_fit_glm_cv
from services.testkit.dealer import deal, encode
from services.testkit.glm_reference import fit_glm_exact, split_table
from services.testkit.outcomes import study_with_outcome
from services.testkit.synthetic import make_joined_table

ROWS, FEATURES, SEED = 600, 4, 5
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "binary", seed=SEED)
METRICS = ("accuracy", "f1")


def _relative(w: Any, reference: Any) -> float:
    return float(np.max(np.abs(np.asarray(w) - reference)) / np.max(np.abs(reference)))


def _loss(kind: ModelKind, eta: np.ndarray, y: np.ndarray) -> float:
    if kind is ModelKind.SVM:
        return float(np.mean(np.maximum(0.0, 1 - (2 * y - 1) * eta) ** 2))
    return float(np.mean(np.logaddexp(0.0, eta) - y * eta))


def plain_cv(spec: RegressionSpec, table: np.ndarray = STUDY.table) -> tuple[float, list[float], dict[str, float]]:
    """(chosen alpha, mean validation loss per alpha, the metrics' fold means at the chosen alpha)."""
    x, y = split_table(table, spec)
    folds = fold_bounds(len(y), spec.cv_folds)
    curve = np.zeros(len(spec.alphas))
    scores: dict[tuple[int, str], float] = {}
    for start, stop in folds:
        train = np.r_[0:start, stop : len(y)]
        for a, alpha in enumerate(spec.alphas):
            fit = fit_glm_exact(x[train], y[train], replace(spec, alphas=(alpha,), cv_folds=0, metrics=()))
            eta = x[start:stop] @ fit.coefficients + fit.intercept
            curve[a] += _loss(spec.kind, eta, y[start:stop]) / len(folds)
            predicted = (eta >= 0).astype(float)
            tp = float(predicted @ y[start:stop])
            held = y[start:stop]
            fold = {"accuracy": float(np.mean(predicted == held)), "f1": 2 * tp / (predicted.sum() + held.sum())}
            for name in spec.metrics:
                scores[(a, name)] = scores.get((a, name), 0.0) + fold[name] / len(folds)
    best = int(np.argmin(curve))
    return spec.alphas[best], list(curve), {name: scores[(best, name)] for name in spec.metrics}


SPECS = [
    RegressionSpec(
        ModelKind.LOGISTIC, (0.002, 0.02, 0.2), STUDY.ranges, STUDY.target, l1_ratio=1.0, cv_folds=3, metrics=METRICS
    ),
    RegressionSpec(ModelKind.SVM, (0.001, 0.05, 1.0), STUDY.ranges, STUDY.target, l1_ratio=0.0, cv_folds=3),
]


@pytest.mark.parametrize("spec", SPECS, ids=["logistic", "svm"])
def test_one_party_cv_matches_the_plaintext_cv(mpc: Any, spec: RegressionSpec) -> None:
    result = mpc.run(secure_fit_glm_cv(mpc, encode(STUDY.table), spec))
    alpha, curve, metrics = plain_cv(spec)
    assert result is not None and result.joined == ROWS
    assert result.alpha == alpha
    assert [a for a, _ in result.cv_curve] == list(spec.alphas)
    assert [v for _, v in result.cv_curve] == pytest.approx(curve, rel=1e-6, abs=1e-8)
    x, y = split_table(STUDY.table, spec)
    exact = fit_glm_exact(x, y, replace(spec, alphas=(alpha,), cv_folds=0, metrics=()))
    assert _relative(result.coefficients, exact.coefficients) <= 1e-4
    assert abs(result.intercept - exact.intercept) <= 1e-4 * max(1.0, abs(exact.intercept))
    assert list(np.asarray(result.coefficients) == 0) == list(exact.coefficients == 0)
    assert [name for name, _ in result.cv_metrics] == list(spec.metrics)
    for name, value in result.cv_metrics:
        assert value == pytest.approx(metrics[name], abs=1e-8)
    predicted = (x @ exact.coefficients + exact.intercept >= 0).astype(float)
    in_sample = {
        "accuracy": float(np.mean(predicted == y)),
        "f1": 2 * float(predicted @ y) / (predicted.sum() + y.sum()),
    }
    assert [name for name, _ in result.metrics] == list(spec.metrics)
    for name, value in result.metrics:
        assert value == pytest.approx(in_sample[name], abs=1e-8)


def test_glm_cv_specs_are_checked() -> None:
    RegressionSpec(ModelKind.LOGISTIC, (0.01, 0.1), STUDY.ranges, STUDY.target, cv_folds=3)
    RegressionSpec(ModelKind.POISSON, (0.01, 0.1), STUDY.ranges, STUDY.target, cv_folds=3)  # secure_poisson_cv
    with pytest.raises(SpecError):
        RegressionSpec(ModelKind.LOGISTIC, (0.01, 0.1), STUDY.ranges, STUDY.target, cv_folds=1)
    with pytest.raises(SpecError):
        RegressionSpec(ModelKind.SVM, (0.01,), STUDY.ranges, STUDY.target, l1_ratio=0.0, cv_folds=0, standardize=True)
    assert common_pb2.MODEL_KIND_LOGISTIC  # the wire kinds the study spec accepts with CV: see test_spec_glm_cv


def test_three_parties_agree_and_choose_the_plaintext_alpha() -> None:
    rows, seed = 400, 7
    args = ["--records", str(rows), "--features", "3", "--seed", str(seed), "--kind", "logistic", "--l1-ratio", "1"]
    args += ["--cv-folds", "3", "--alpha", "0.002", "--alpha", "0.02", "--alpha", "0.2", "--metric", "accuracy"]
    reports = run_local(args)
    assert "result" not in reports[2]
    assert reports[0]["result"] == reports[1]["result"]
    study = study_with_outcome(make_joined_table(rows, 3, seed=seed), "binary", seed=seed)
    table = deal(study.table, study.owners, np.random.default_rng(seed)).table
    spec = RegressionSpec(
        ModelKind.LOGISTIC,
        (0.002, 0.02, 0.2),
        study.ranges,
        study.target,
        l1_ratio=1.0,
        cv_folds=3,
        metrics=("accuracy",),
    )
    alpha, curve, metrics = plain_cv(spec, table)
    result = reports[0]["result"]
    assert result["alpha"] == alpha
    assert [v for _, v in result["cv_curve"]] == pytest.approx(curve, rel=1e-6, abs=1e-8)
    assert result["cv_metrics"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-8)
    x, y = split_table(table, spec)
    exact = fit_glm_exact(x, y, replace(spec, alphas=(alpha,), cv_folds=0, metrics=()))
    assert _relative(result["coefficients"], exact.coefficients) <= 1e-4
