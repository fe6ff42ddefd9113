"""K-fold cross-validation of the Poisson fit (``secure_poisson_cv``) against a plaintext CV.

The plaintext CV fits every fold × alpha with the exact solver (``glm_reference.fit_poisson_exact``) on
the same contiguous folds, scores the held-out fold by the mean Poisson deviance, and picks the first
minimum of the summed curve, as the secure run does. It also measures the held-out rows' exponent
s = η − b₀_k against the range the secure exponential assumes (``validation_plan``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import mean_poisson_deviance

from services.bench.local_run import run_local
from services.lasso.core.params import ModelKind, RegressionSpec, fold_bounds
from services.lasso.core.poisson_plan import make_poisson_plan
from services.lasso.mpc.secure_poisson_cv import secure_fit_poisson_cv, validation_plan
from services.testkit.dealer import deal, encode
from services.testkit.glm_reference import fit_poisson_exact, poisson_start, split_table
from services.testkit.outcomes import study_with_outcome
from services.testkit.synthetic import make_joined_table

ROWS, FEATURES, SEED = 600, 4, 5
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "count", seed=SEED)
METRICS = ("mse", "r2", "adjusted_r2", "deviance")


def _relative(w: Any, reference: Any) -> float:
    return float(np.max(np.abs(np.asarray(w) - reference)) / np.max(np.abs(reference)))


def _metrics(y: np.ndarray, mu: np.ndarray, d: int) -> dict[str, float]:
    n = len(y)
    mse = float(np.mean((y - mu) ** 2))
    r2 = 1 - mse / float(np.var(y))
    return {
        "mse": mse,
        "r2": r2,
        "adjusted_r2": 1 - (1 - r2) * (n - 1) / (n - d - 1),
        "deviance": float(mean_poisson_deviance(y, mu)),
    }


def _single(spec: RegressionSpec, alpha: float) -> RegressionSpec:
    return replace(spec, alphas=(alpha,), cv_folds=0, metrics=())


def plain_cv(
    spec: RegressionSpec, table: np.ndarray = STUDY.table
) -> tuple[float, list[float], dict[str, float], float]:
    """(chosen alpha, mean held-out deviance per alpha, the metrics' fold means at the chosen alpha,
    the largest held-out s − S_VAL: ≤ 0 when the secure exponential's assumed range holds)."""
    x, y = split_table(table, spec)
    folds = fold_bounds(len(y), spec.cv_folds)
    curve = np.zeros(len(spec.alphas))
    scores: dict[tuple[int, str], float] = {}
    s_high = validation_plan(make_poisson_plan(_single(spec, spec.alphas[0]), len(y))).s_high
    worst = -np.inf
    for start, stop in folds:
        train = np.r_[0:start, stop : len(y)]
        b0 = poisson_start(make_poisson_plan(_single(spec, spec.alphas[0]), train.size), y[train])
        for a, alpha in enumerate(spec.alphas):
            fit = fit_poisson_exact(x[train], y[train], _single(spec, alpha))
            eta = x[start:stop] @ fit.coefficients + fit.intercept
            worst = max(worst, float(np.max(eta - b0)) - s_high)
            values = _metrics(y[start:stop], np.exp(eta), x.shape[1])
            curve[a] += values["deviance"] / len(folds)
            for name in spec.metrics:
                scores[(a, name)] = scores.get((a, name), 0.0) + values[name] / len(folds)
    best = int(np.argmin(curve))
    return spec.alphas[best], list(curve), {name: scores[(best, name)] for name in spec.metrics}, worst


SPECS = [
    RegressionSpec(
        ModelKind.POISSON, (0.001, 0.01, 0.1), STUDY.ranges, STUDY.target, l1_ratio=1.0, cv_folds=3, metrics=METRICS
    ),
    RegressionSpec(ModelKind.POISSON, (0.0003, 0.03, 3.0), STUDY.ranges, STUDY.target, l1_ratio=0.0, cv_folds=3),
]


@pytest.mark.parametrize("spec", SPECS, ids=["lasso", "ridge"])
def test_one_party_cv_matches_the_plaintext_cv(mpc: Any, spec: RegressionSpec) -> None:
    result = mpc.run(secure_fit_poisson_cv(mpc, encode(STUDY.table), spec))
    alpha, curve, metrics, worst = plain_cv(spec)
    assert worst <= 0  # the held-out exponents are inside the assumed range
    assert result is not None and result.joined == ROWS
    assert result.alpha == alpha
    assert [a for a, _ in result.cv_curve] == list(spec.alphas)
    assert [v for _, v in result.cv_curve] == pytest.approx(curve, rel=1e-6, abs=1e-8)
    x, y = split_table(STUDY.table, spec)
    exact = fit_poisson_exact(x, y, _single(spec, alpha))
    assert _relative(result.coefficients, exact.coefficients) <= 1e-4
    assert abs(result.intercept - exact.intercept) <= 1e-4 * max(1.0, abs(exact.intercept))
    assert list(np.asarray(result.coefficients) == 0) == list(exact.coefficients == 0)
    assert [name for name, _ in result.cv_metrics] == list(spec.metrics)
    for name, value in result.cv_metrics:
        assert value == pytest.approx(metrics[name], rel=1e-6, abs=1e-8)
    in_sample = _metrics(y, np.exp(x @ exact.coefficients + exact.intercept), x.shape[1])
    assert [name for name, _ in result.metrics] == list(spec.metrics)
    for name, value in result.metrics:
        assert value == pytest.approx(in_sample[name], rel=1e-6, abs=1e-8)


def test_a_large_penalty_zeroes_every_coefficient_and_the_curve_says_why(mpc: Any) -> None:
    spec = RegressionSpec(ModelKind.POISSON, (0.01, 100.0), STUDY.ranges, STUDY.target, l1_ratio=1.0, cv_folds=2)
    result = mpc.run(secure_fit_poisson_cv(mpc, encode(STUDY.table), spec))
    alpha, curve, _, _ = plain_cv(spec)
    assert result is not None and result.alpha == alpha == 0.01
    assert [v for _, v in result.cv_curve] == pytest.approx(curve, rel=1e-6, abs=1e-8)
    assert curve[1] > curve[0]  # the intercept-only model predicts the held-out counts worse


def test_three_parties_agree_and_choose_the_plaintext_alpha() -> None:
    rows, seed = 400, 7
    args = ["--records", str(rows), "--features", "3", "--seed", str(seed), "--kind", "poisson", "--l1-ratio", "1"]
    args += ["--cv-folds", "3", "--alpha", "0.001", "--alpha", "0.01", "--alpha", "0.1", "--metric", "deviance"]
    reports = run_local(args)
    assert "result" not in reports[2]
    assert reports[0]["result"] == reports[1]["result"]
    study = study_with_outcome(make_joined_table(rows, 3, seed=seed), "count", seed=seed)
    table = deal(study.table, study.owners, np.random.default_rng(seed)).table
    spec = RegressionSpec(
        ModelKind.POISSON,
        (0.001, 0.01, 0.1),
        study.ranges,
        study.target,
        l1_ratio=1.0,
        cv_folds=3,
        metrics=("deviance",),
    )
    alpha, curve, metrics, _ = plain_cv(spec, table)
    result = reports[0]["result"]
    assert result["alpha"] == alpha
    assert [v for _, v in result["cv_curve"]] == pytest.approx(curve, rel=1e-6, abs=1e-8)
    assert result["cv_metrics"]["deviance"] == pytest.approx(metrics["deviance"], rel=1e-6, abs=1e-8)
    x, y = split_table(table, spec)
    exact = fit_poisson_exact(x, y, _single(spec, alpha))
    assert _relative(result["coefficients"], exact.coefficients) <= 1e-4
