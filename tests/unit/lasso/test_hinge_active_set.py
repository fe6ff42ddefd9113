"""The active-set finishing step for the plain hinge (services/testkit/hinge_active_set.py): exact from the
right partition (also with more than d + 1 rows on the margin), its certificate sound, its schedules measured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import services.testkit.hinge_active_set as active_set
from services.lasso.core.params import ModelKind, RegressionSpec
from services.testkit.glm_reference import Rows, glm_rows, split_table
from services.testkit.hinge_active_set import (
    ActiveSetSchedule,
    certify,
    finish_hinge,
    solve_hinge_active_set,
)
from services.testkit.hinge_reference import hinge_plan, solve_hinge_exact
from services.testkit.hinge_study import HARDER, PROBLEMS, measure, problem
from services.testkit.outcomes import study_with_outcome
from services.testkit.synthetic import make_joined_table

ROWS, FEATURES, SEED = 300, 4, 3
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "binary", seed=SEED)
#: One exact finishing pass: the equality QP by the method of multipliers (3 solves at ρ = 1e6).
EXACT_PASS = ActiveSetSchedule(warm_steps=0, passes=1, window=1e-3, rho=1e6, multiplier_updates=3)


def _problem(alpha: float) -> tuple[Rows, np.ndarray, np.ndarray]:
    spec = RegressionSpec(ModelKind.SVM, (alpha,), STUDY.ranges, STUDY.target, l1_ratio=0.0, squared_hinge=False)
    x, y = split_table(STUDY.table, spec)
    plan = hinge_plan(spec, len(y))
    return glm_rows(x, y, plan), np.asarray(plan.ridge), np.asarray(plan.halves)


def _relative(v: np.ndarray, exact: np.ndarray, halves: np.ndarray) -> float:
    w, w_exact = v[:-1] / halves, exact[:-1] / halves
    return float(np.max(np.abs(w - w_exact)) / np.max(np.abs(w_exact)))


def _partition_beta(rows: Rows, v: np.ndarray) -> np.ndarray:
    """β = 1 below the margin, 0 beyond, ½ on it (so the first pass puts exactly the margin rows in S)."""
    t = rows.y * (rows.x @ v)
    return np.where(t < 1 - 1e-7, 1.0, np.where(t > 1 + 1e-7, 0.0, 0.5))


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 1.0])
def test_one_pass_from_the_right_partition_is_the_optimum_and_certified(alpha: float) -> None:
    rows, ridge, halves = _problem(alpha)
    exact = solve_hinge_exact(rows, ridge)
    start = exact + 1e-4 * np.random.default_rng(SEED).standard_normal(exact.size)  # t moves by < τ = 1e-3
    fit = finish_hinge(rows, ridge, halves, start, _partition_beta(rows, exact), np.eye(exact.size), EXACT_PASS)
    assert _relative(fit.v, exact, halves) <= 1e-8
    assert fit.certificate.holds and fit.certificate.relative_bound <= 1e-5
    assert fit.margin_rows == int(np.sum(np.abs(rows.y * (rows.x @ exact) - 1) <= 1e-7))


def test_more_than_d_plus_one_rows_on_the_margin() -> None:
    """Every margin row twice (exact ties): 2·|S| > d + 1 rows on the margin, M singular but consistent."""
    rows, ridge, halves = _problem(0.01)
    exact = solve_hinge_exact(rows, ridge)
    margin = np.abs(rows.y * (rows.x @ exact) - 1) <= 1e-7
    doubled = Rows(
        np.vstack([rows.x, rows.x[margin]]),
        np.concatenate([rows.y, rows.y[margin]]),
        np.ones(rows.y.size + int(margin.sum())),
        rows.mean,
    )
    assert 2 * margin.sum() > rows.x.shape[1]
    exact_doubled = solve_hinge_exact(doubled, ridge)
    beta = _partition_beta(doubled, exact_doubled)
    fit = finish_hinge(doubled, ridge, halves, exact_doubled, beta, np.eye(exact.size), EXACT_PASS)
    assert fit.margin_rows == 2 * int(margin.sum())
    assert _relative(fit.v, exact_doubled, halves) <= 1e-8
    assert fit.certificate.holds


def test_the_certificate_bounds_the_error_wherever_it_is_checked() -> None:
    """For any v and β ∈ [0, 1]: the bound is ≥ the true error, so a holding certificate means ≤ 1e-3."""
    rows, ridge, halves = _problem(0.01)
    exact = solve_hinge_exact(rows, ridge)
    best = finish_hinge(rows, ridge, halves, exact, _partition_beta(rows, exact), np.eye(exact.size), EXACT_PASS)
    w_exact = exact[:-1] / halves
    rng = np.random.default_rng(SEED)
    held = 0
    for scale in (1e-9, 1e-7, 1e-5, 1e-3, 1e-1):
        for _ in range(20):
            v = best.v + scale * rng.standard_normal(exact.size)
            beta = np.clip(best.beta + scale * rng.standard_normal(rows.y.size), 0, 1)
            cert = certify(rows, ridge, halves, v, beta)
            error = float(np.max(np.abs(v[:-1] / halves - w_exact)))
            assert error <= cert.error_bound
            held += cert.holds
            if cert.holds:
                assert error / np.max(np.abs(w_exact)) <= 1e-3
    assert held >= 20  # the small perturbations are certified


def test_the_squared_hinge_optimum_is_not_certified() -> None:
    rows, ridge, halves = _problem(0.01)
    schedule = ActiveSetSchedule(warm_steps=4, passes=0)
    fit = solve_hinge_active_set(rows, ridge, halves, schedule)
    assert not fit.certificate.holds
    assert _relative(fit.v, solve_hinge_exact(rows, ridge), halves) > 0.1  # the squared hinge is another loss


@pytest.mark.parametrize(
    "schedule",
    [
        ActiveSetSchedule(warm_steps=4, passes=5, window=0.25, rho=1e4),
        ActiveSetSchedule(warm_steps=1, softplus=tuple(2.0**-k for k in range(2, 8)), passes=2, window=2**-5, rho=1e6),
        ActiveSetSchedule(
            warm_steps=1, softplus=tuple(2.0**-k for k in range(2, 8)), passes=6, window=2**-7, rho=1e6, proximal=1.0
        ),
        ActiveSetSchedule(warm_steps=4, passes=5, window=1.0, rho=1e4, quantum=2.0**-40),
        ActiveSetSchedule(
            warm_steps=1,
            softplus=tuple(2.0**-k for k in range(2, 8)),
            passes=4,
            window=2**-7,
            proximal=1.0,
            relaxation=0.5,
            freeze=2**-6,
        ),
    ],
)
@pytest.mark.parametrize("alpha", [1e-3, 0.01, 1.0])
def test_a_fixed_schedule_is_never_certified_beyond_the_goal(schedule: ActiveSetSchedule, alpha: float) -> None:
    """The measured schedules mostly fail (ADR 0014), but never silently: certified ⇒ within 1e-3."""
    rows, ridge, halves = _problem(alpha)
    fit = solve_hinge_active_set(rows, ridge, halves, schedule)
    error = _relative(fit.v, solve_hinge_exact(rows, ridge), halves)
    assert (not fit.certificate.holds) or error <= 1e-3
    assert fit.row_passes == schedule.warm_steps + len(schedule.softplus) + schedule.passes + 1
    assert len(fit.changes) == max(schedule.passes - 1, 0)


def test_an_empty_margin_set_keeps_the_solve_finite() -> None:
    """No row within a tiny window of the margin: Γ + ρ'M is singular in b; the proximal term holds b."""
    rows, ridge, halves = _problem(0.01)
    schedule = ActiveSetSchedule(warm_steps=4, passes=1, window=1e-12)
    fit = solve_hinge_active_set(rows, ridge, halves, schedule)
    assert fit.margin_rows == 0
    assert np.all(np.isfinite(fit.v)) and not fit.certificate.holds


def test_fixed_point_model_truncates_to_the_grid() -> None:
    quantum = 2.0**-40
    model = active_set._FixedPoint(quantum, SEED)
    x = np.random.default_rng(SEED).standard_normal(1000)
    rounded = model.value(x)
    assert np.allclose(rounded / quantum, np.round(rounded / quantum), atol=1e-3)
    assert np.all((rounded - x) / quantum >= -2 - 1e-6) and np.all((rounded - x) / quantum <= 2 + 1e-6)
    exact = active_set._FixedPoint(None, SEED)
    assert np.array_equal(exact.value(x), x)
    assert dataclasses.replace(EXACT_PASS, quantum=quantum).row_passes == 2


def test_the_study_measures_schedules_and_its_harder_problems_have_certified_optima() -> None:
    """hinge_study (ADR 0014's table): the collinear and scaled variants still have a certified exact optimum."""
    for spec in HARDER[:2]:
        p = problem(*spec)
        assert p.relative_error(p.exact) == 0.0
    measured = measure(ActiveSetSchedule(warm_steps=4, passes=2), PROBLEMS[:1] + HARDER[:2])
    assert measured.runs == 3 and measured.row_passes == 7
    assert measured.certified_beyond_goal == 0
    assert measured.median_error <= measured.worst_error
