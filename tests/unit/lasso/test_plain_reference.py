"""The plaintext twin of the secure algorithm equals scikit-learn (same objective)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.lasso.core.params import ModelKind, RegressionSpec, SpecError, as_spec_ranges, fold_bounds
from services.lasso.core.plan import make_plan, ns_iterations
from services.testkit.plain_reference import cv_curve_sklearn, fit_plain, fit_sklearn, split_table
from services.testkit.synthetic import make_joined_table

STUDY = make_joined_table(2000, 10, seed=7)
ALPHAS = (0.01, 0.3, 2.0, 4.0)  # from dense to eight of ten coefficients zero (two true effects)


def _spec(kind: ModelKind, alpha: float, standardize: bool = False) -> RegressionSpec:
    return RegressionSpec(kind, (alpha,), STUDY.ranges, STUDY.target, l1_ratio=0.4, standardize=standardize)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("kind", [kind for kind in ModelKind if not kind.is_glm])
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_plain_equals_sklearn(kind: ModelKind, standardize: bool, alpha: float) -> None:
    spec = _spec(kind, alpha, standardize)
    x, y = split_table(STUDY.table, spec)
    fit = fit_plain(x, y, spec)
    w, b, std = fit_sklearn(x, y, spec, alpha)
    assert _relative(fit.coefficients, w) <= 1e-6
    assert abs(fit.intercept - b) <= 1e-6 * max(1.0, abs(b))
    if kind is not ModelKind.RIDGE:
        assert np.array_equal(fit.coefficients == 0, np.abs(w) < 1e-12)
    if standardize:
        assert fit.standardized_coefficients is not None and std is not None
        assert _relative(fit.standardized_coefficients, std) <= 1e-6


def test_sparse_alphas_zero_some_coefficients() -> None:
    zeros = []
    for alpha in ALPHAS:
        spec = _spec(ModelKind.LASSO, alpha)
        x, y = split_table(STUDY.table, spec)
        zeros.append(int(np.sum(fit_plain(x, y, spec).coefficients == 0)))
    assert zeros[0] < zeros[-1] < STUDY.table.shape[1] - 1


@pytest.mark.parametrize("kind", [ModelKind.LASSO, ModelKind.ELASTIC_NET])
def test_cv_curve_equals_sklearn_on_the_same_folds(kind: ModelKind) -> None:
    spec = RegressionSpec(kind, (4.0, 1.0, 0.1), STUDY.ranges, STUDY.target, l1_ratio=0.5, cv_folds=3)
    x, y = split_table(STUDY.table, spec)
    fit = fit_plain(x, y, spec)
    reference = cv_curve_sklearn(x, y, spec)
    for (alpha, mse), (alpha_ref, mse_ref) in zip(fit.cv_curve, reference, strict=True):
        assert alpha == alpha_ref and mse == pytest.approx(mse_ref, rel=1e-8)
    best = min(reference, key=lambda point: point[1])[0]
    assert fit.alpha == best
    w, _, _ = fit_sklearn(x, y, spec, best)
    assert _relative(fit.coefficients, w) <= 1e-6


def test_collinear_toeplitz_features() -> None:
    rng = np.random.default_rng(3)
    d = 10
    cov = 0.9 ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
    x = rng.multivariate_normal(np.zeros(d), cov, size=3000)
    y = x[:, ::2] @ rng.normal(size=5) + rng.normal(size=3000)
    ranges = as_spec_ranges([(-6.0, 6.0)] * d + [(float(y.min()) - 1, float(y.max()) + 1)])
    for alpha in (0.001, 0.05, 0.3):
        spec = RegressionSpec(ModelKind.LASSO, (alpha,), ranges, d)
        fit = fit_plain(x, y, spec)
        w, _, _ = fit_sklearn(x, y, spec, alpha)
        assert _relative(fit.coefficients, w) <= 1e-6
        assert np.array_equal(fit.coefficients == 0, np.abs(w) < 1e-12)


def test_fewer_iterations_are_less_accurate_but_polishing_recovers_early() -> None:
    spec = _spec(ModelKind.LASSO, 2.0)
    x, y = split_table(STUDY.table, spec)
    w, _, _ = fit_sklearn(x, y, spec, 2.0)
    assert _relative(fit_plain(x, y, dataclasses.replace(spec, iterations=20)).coefficients, w) <= 1e-6
    assert _relative(fit_plain(x, y, dataclasses.replace(spec, iterations=1)).coefficients, w) > 1e-6


def test_plan_and_spec_rules() -> None:
    assert fold_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert ns_iterations(10, 0.25, 10.25) == 11
    plan = make_plan(_spec(ModelKind.RIDGE, 1.0), 2000)
    assert plan.admm_iterations == 0 and not plan.has_l1
    with pytest.raises(SpecError):
        RegressionSpec(ModelKind.LASSO, (0.1, 0.2), STUDY.ranges, STUDY.target)  # a grid needs CV
    with pytest.raises(SpecError):
        RegressionSpec(ModelKind.LASSO, (-1.0,), STUDY.ranges, STUDY.target)
    with pytest.raises(SpecError):
        as_spec_ranges([(1.0, 1.0)])
