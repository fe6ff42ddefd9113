"""The plain-hinge SVM's plaintext oracles (services/testkit/hinge_reference.py): the exact solver
against scikit-learn's LinearSVC, its certificate, and the smoothed-hinge continuation's bound."""

from __future__ import annotations

import numpy as np
import pytest

from services.lasso.core.params import ModelKind, RegressionSpec
from services.testkit.glm_reference import Rows, glm_rows, split_table
from services.testkit.hinge_reference import (
    HingeCertificateError,
    fit_hinge_exact,
    fit_hinge_linear_svc,
    fit_hinge_smoothed,
    fit_hinge_softplus,
    hinge_objective,
    hinge_plan,
    solve_hinge_exact,
    solve_hinge_smoothed,
    solve_hinge_softplus,
)
from services.testkit.outcomes import study_with_outcome
from services.testkit.synthetic import make_joined_table

ROWS, FEATURES, SEED = 300, 4, 3
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "binary", seed=SEED)


def _spec(alpha: float) -> RegressionSpec:
    return RegressionSpec(ModelKind.SVM, (alpha,), STUDY.ranges, STUDY.target, l1_ratio=0.0, squared_hinge=False)


def _relative(w: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(w) - reference)) / np.max(np.abs(reference)))


def _problem(alpha: float) -> tuple[Rows, np.ndarray]:
    spec = _spec(alpha)
    x, y = split_table(STUDY.table, spec)
    plan = hinge_plan(spec, len(y))
    return glm_rows(x, y, plan), np.asarray(plan.ridge)


# LinearSVC also penalises b as ½(b/s)²: at these intercept scalings s the gap is below the bound.
@pytest.mark.parametrize("alpha,scaling,bound", [(0.01, 10.0, 1e-6), (0.1, 100.0, 1e-5)])
def test_exact_optimum_is_linear_svcs_with_c_one_over_m_alpha(alpha: float, scaling: float, bound: float) -> None:
    spec = _spec(alpha)
    x, y = split_table(STUDY.table, spec)
    exact, svc = fit_hinge_exact(x, y, spec), fit_hinge_linear_svc(x, y, spec, scaling)
    assert _relative(svc.coefficients, exact.coefficients) <= bound
    assert abs(svc.intercept - exact.intercept) <= bound * max(1.0, abs(exact.intercept))


def test_exact_optimum_is_not_improved_by_any_nearby_point() -> None:
    rows, ridge = _problem(0.01)
    v = solve_hinge_exact(rows, ridge)
    best = hinge_objective(rows, ridge, v)
    rng = np.random.default_rng(SEED)
    for scale in (1e-3, 1e-6):
        for _ in range(200):
            assert hinge_objective(rows, ridge, v + scale * rng.standard_normal(v.size)) >= best - 1e-15


def test_a_point_off_the_optimum_fails_the_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, ridge = _problem(0.01)
    import services.testkit.hinge_reference as reference

    real = reference.solve_hinge_smoothed

    def early(rows_: Rows, ridge_: np.ndarray, deltas: tuple[float, ...]) -> reference.SmoothedPath:
        return real(rows_, ridge_, deltas[:2])  # stopped at δ = 0.1: the wrong rows on the margin

    monkeypatch.setattr(reference, "solve_hinge_smoothed", early)
    with pytest.raises(HingeCertificateError, match="KKT"):
        solve_hinge_exact(rows, ridge)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
def test_smoothed_continuation_is_within_its_bound(alpha: float) -> None:
    """0 ≤ L − L_δ ≤ δ/2 gives f(v_δ) − f(v*) ≤ δ/2; at δ = 1e-3 the coefficients are within 1e-3 (measured)."""
    rows, ridge = _problem(alpha)
    exact = solve_hinge_exact(rows, ridge)
    delta = 2.0**-10
    path = solve_hinge_smoothed(rows, ridge, tuple(0.5**k for k in range(11)))
    gap = hinge_objective(rows, ridge, path.v) - hinge_objective(rows, ridge, exact)
    assert -1e-15 <= gap <= delta / 2
    assert _relative(path.v[:-1], exact[:-1]) <= 1e-3
    assert path.levels == 11 and path.newton_steps >= path.levels


def test_hinge_fit_on_the_original_scale() -> None:
    spec = _spec(0.01)
    x, y = split_table(STUDY.table, spec)
    exact = fit_hinge_exact(x, y, spec)
    smoothed, _ = fit_hinge_smoothed(x, y, spec, tuple(0.5**k for k in range(11)))
    assert _relative(smoothed.coefficients, exact.coefficients) <= 1e-3
    # The original-scale objective (1/m)·Σ max(0, 1 − ỹ(wᵀx + b)) + α/2·‖w‖² is the normalised one.
    rows, ridge = _problem(0.01)
    margin = np.maximum(0.0, 1 - (2 * y - 1) * (x @ exact.coefficients + exact.intercept))
    original = float(margin.mean() + 0.01 / 2 * exact.coefficients @ exact.coefficients)
    assert original == pytest.approx(hinge_objective(rows, ridge, solve_hinge_exact(rows, ridge)), abs=1e-12)


def test_hinge_plan_is_for_the_hinge_svm_only() -> None:
    squared = RegressionSpec(ModelKind.SVM, (0.01,), STUDY.ranges, STUDY.target, l1_ratio=0.0)
    with pytest.raises(ValueError, match="hinge"):
        hinge_plan(squared, ROWS)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.1])
def test_softplus_schedule_is_within_the_accuracy_goal(alpha: float) -> None:
    """11 plain Newton steps on the softplus-smoothed hinge (no line search): ≤ 1e-3 relative (measured)."""
    spec = _spec(alpha)
    x, y = split_table(STUDY.table, spec)
    exact, softplus = fit_hinge_exact(x, y, spec), fit_hinge_softplus(x, y, spec)
    assert _relative(softplus.coefficients, exact.coefficients) <= 1e-3
    rows, ridge = _problem(alpha)
    gap = hinge_objective(rows, ridge, solve_hinge_softplus(rows, ridge)) - hinge_objective(
        rows, ridge, solve_hinge_exact(rows, ridge)
    )
    assert 0 <= gap <= 2.0**-12 * np.log(2)  # δ·log 2 at the last δ
