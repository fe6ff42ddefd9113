"""The secure GLM fit (logistic regression) against its plaintext twin, the exact optimum and scikit-learn.

In-process runs use MPyC with one party (``-M1``: the same code, threshold 0); the
three-party run starts three processes over MPyC's own TCP (``local_run``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from services.bench.local_run import run_local
from services.lasso.core.glm_plan import (
    ADMM_FIRST,
    ADMM_LATER,
    DEFAULT_OUTER_ITERATIONS,
    SIGN_FRAC,
    make_glm_plan,
    newton_plan,
)
from services.lasso.core.params import ModelKind, RegressionSpec, SpecError
from services.lasso.mpc.secure_compare import less_than_zero
from services.lasso.mpc.secure_functions import reciprocal_one_plus, reciprocal_unit, sigmoid
from services.lasso.mpc.secure_glm import FRAC, _fields, _inverse_sqrt, secure_fit_glm
from services.lasso.mpc.secure_ops import FieldOps
from services.testkit.dealer import deal, encode
from services.testkit.glm_cases import TWIN_CASES, TwinCase, case_data
from services.testkit.glm_reference import (
    fit_glm_exact,
    fit_glm_plain,
    fit_glm_sklearn,
    glm_rows,
    original_scale,
    solve_exact,
    solve_plain_counted,
    split_table,
)
from services.testkit.glm_reference import sigmoid as plain_sigmoid
from services.testkit.outcomes import binary_outcome, study_with_outcome
from services.testkit.synthetic import make_joined_table

ROWS, FEATURES, SEED = 300, 4, 3
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "binary", seed=SEED)
METRICS = ("accuracy", "precision", "recall", "f1")


def _spec(alpha: float, rho: float, **kw: Any) -> RegressionSpec:
    return RegressionSpec(ModelKind.LOGISTIC, (alpha,), STUDY.ranges, STUDY.target, l1_ratio=rho, **kw)


def _relative(w: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(w) - reference)) / np.max(np.abs(reference)))


CASES = [(0.01, 1.0, False), (0.05, 1.0, False), (0.003, 0.5, True), (0.01, 0.0, False), (0.05, 1.0, True)]


@pytest.mark.parametrize("alpha,rho,balanced", CASES)
def test_plain_twin_reaches_the_exact_optimum(alpha: float, rho: float, balanced: bool) -> None:
    spec = _spec(alpha, rho, balanced_class_weights=balanced)
    x, y = split_table(STUDY.table, spec)
    plain, exact = fit_glm_plain(x, y, spec), fit_glm_exact(x, y, spec)
    # The stopping rule ends the fit when the Newton step is ≤ 1e-3: the error is then ~step² (goal 1e-4).
    assert _relative(plain.coefficients, exact.coefficients) <= 1e-6
    assert abs(plain.intercept - exact.intercept) <= 1e-6 * max(1.0, abs(exact.intercept))
    assert list(plain.coefficients == 0) == list(exact.coefficients == 0)


@pytest.mark.parametrize("case", TWIN_CASES, ids=lambda c: f"{c.rows}x{c.features}-{c.share}-{c.balanced}-{c.alpha}")
def test_logistic_iteration_counts_stop_as_the_reference_plan_on_the_twin_cases(case: TwinCase) -> None:
    """The plan's ADMM iterations (``LOGISTIC_ADMM_*``) stop at the same outer iteration as 30/10, with the
    exact zero pattern and within 1e-5 relative of the exact optimum (goal 1e-4)."""
    spec, x, y = case_data(case)
    plan = make_glm_plan(spec, len(y))
    reference = newton_plan(spec, len(y), 0.25, case.balanced, admm_counts=(ADMM_FIRST, ADMM_LATER))
    rows = glm_rows(x, y, plan)
    v, used = solve_plain_counted(plan, rows)
    assert used == solve_plain_counted(reference, rows)[1]
    fit, exact = original_scale(plan, rows, v), original_scale(plan, rows, solve_exact(plan, rows))
    assert _relative(fit.coefficients, exact.coefficients) <= 1e-5
    assert list(fit.coefficients == 0) == list(exact.coefficients == 0)


@pytest.mark.parametrize("alpha,rho,balanced", [(0.05, 1.0, False), (0.01, 0.0, True)])
def test_the_objective_is_scikit_learns_with_c_one_over_m_alpha(alpha: float, rho: float, balanced: bool) -> None:
    spec = _spec(alpha, rho, balanced_class_weights=balanced)
    x, y = split_table(STUDY.table, spec)
    exact, sklearn = fit_glm_exact(x, y, spec), fit_glm_sklearn(x, y, spec)
    assert _relative(sklearn.coefficients, exact.coefficients) <= 1e-6
    assert list(np.abs(sklearn.coefficients) < 1e-10) == list(exact.coefficients == 0)


@pytest.mark.parametrize("alpha,rho,balanced", CASES)
def test_one_party_matches_the_exact_optimum(mpc: Any, alpha: float, rho: float, balanced: bool) -> None:
    spec = _spec(alpha, rho, balanced_class_weights=balanced, metrics=METRICS)
    result = mpc.run(secure_fit_glm(mpc, encode(STUDY.table), spec))
    assert result is not None and result.joined == ROWS and 4 <= result.iterations < DEFAULT_OUTER_ITERATIONS
    x, y = split_table(STUDY.table, spec)
    exact = fit_glm_exact(x, y, spec)
    assert result.iterations == fit_glm_plain(x, y, spec).iterations  # the stopping rule, as the twin's
    assert _relative(result.coefficients, exact.coefficients) <= 1e-6
    assert abs(result.intercept - exact.intercept) <= 1e-6 * max(1.0, abs(exact.intercept))
    assert list(np.asarray(result.coefficients) == 0) == list(exact.coefficients == 0)
    predicted = (x @ exact.coefficients + exact.intercept > 0).astype(float)
    tp = float(predicted @ y)
    expected = {
        "accuracy": float(np.mean(predicted == y)),
        "precision": tp / predicted.sum(),
        "recall": tp / y.sum(),
        "f1": 2 * tp / (predicted.sum() + y.sum()),
    }
    assert [name for name, _ in result.metrics] == list(METRICS)
    for name, value in result.metrics:
        assert value == pytest.approx(expected[name], abs=1e-8)


def test_an_l1_penalty_large_enough_zeroes_every_coefficient(mpc: Any) -> None:
    spec = _spec(5.0, 1.0)
    result = mpc.run(secure_fit_glm(mpc, encode(STUDY.table), spec))
    assert result is not None and all(w == 0 for w in result.coefficients)
    share = float(np.mean(STUDY.table[:, STUDY.target]))
    assert result.intercept == pytest.approx(math.log(share / (1 - share)), abs=1e-6)


def test_sigmoid_is_within_its_documented_error(mpc: Any) -> None:
    spec = _spec(0.01, 1.0)
    fields = _fields(mpc, make_glm_plan(spec, ROWS))
    eta = np.concatenate([np.linspace(-40, 40, 401), [0.0, 2.0**-6, -(2.0**-6), 300.0, -300.0]])

    async def run() -> tuple[np.ndarray, np.ndarray]:
        prob, weight, _ = await sigmoid(fields.big, fields.small, fields.big.fixed(eta, 2 * FRAC), FRAC)
        return fields.big.to_float(prob, FRAC), fields.big.to_float(weight, FRAC)

    prob, weight = mpc.run(run())
    truth = plain_sigmoid(eta)
    assert np.max(np.abs(prob - truth)) <= 3e-9
    assert np.max(np.abs(weight - truth * (1 - truth))) <= 3e-9


def test_reciprocal_covers_a_sign_wrong_by_two_grid_units(mpc: Any) -> None:
    # With three parties the sign of η on the 2^-SIGN_FRAC grid may be wrong for |η| < 2^(1-SIGN_FRAC)
    # (the truncation is off by -1 ... +2 units; one party's test cannot produce it), so 1/(1 + v)
    # must hold for v = e^(-u) up to e^(2^(1-SIGN_FRAC)).
    fields = _fields(mpc, make_glm_plan(_spec(0.01, 1.0), ROWS))
    high = 1 + math.exp(2.0 ** (1 - SIGN_FRAC))
    v = np.linspace(0.0, high - 1, 201)

    async def run() -> np.ndarray:
        return fields.big.to_float(await reciprocal_one_plus(fields.big, fields.big.fixed(v, FRAC), FRAC, high), FRAC)

    assert np.max(np.abs(mpc.run(run()) * (1 + v) - 1)) <= 3e-9


def test_jacobi_scaling_from_bands_reaches_one_over_root_g(mpc: Any) -> None:
    """e = 1/√g for the first Hessian's diagonal over its whole range G·2^−26 … G (``glm_plan.E_BANDS``):
    the banded start and E_NEWTON_FROM_BANDS Newton steps reach the fixed-point rounding (g·y at 2^−40 is
    ~2^−27 relative for the smallest g; measured 2e-9 with 5 steps and with 6)."""
    spec = _spec(0.01, 0.5)
    plan = make_glm_plan(spec, ROWS)
    fields = _fields(mpc, plan)
    top = 1 / np.asarray(plan.newton_start) ** 2  # G_j = 4s₀ + γ_j
    g = np.array([[t * 2.0**-k for t in top] for k in np.linspace(0, 25.9, 9)])

    async def run() -> np.ndarray:
        ops = fields.big
        rows = [await _inverse_sqrt(ops, ops.fixed(row, FRAC), plan) for row in g]
        return np.array([ops.to_float(r, FRAC) for r in rows])

    e = mpc.run(run())
    truth = 1 / np.sqrt(np.round(g * 2.0**FRAC) / 2.0**FRAC)  # of g as shared (2^−40 absolute)
    assert np.max(np.abs(e / truth - 1)) <= 1e-8


def test_comparison_and_reciprocal(mpc: Any) -> None:
    ops = FieldOps(mpc, mpc.SecInt(60))
    values = np.array([-(2**20), -5, -1, 0, 1, 7, 2**20 - 1], dtype=object)
    big = FieldOps(mpc, mpc.SecFxp(120, FRAC))

    async def run() -> tuple[list[int], np.ndarray]:
        bits = await less_than_zero(ops, ops.public(values), 22)
        inverse = await reciprocal_unit(big, big.fixed([1.0, 0.5, 1e-3, 1 / 3000], FRAC), 4000, FRAC)
        return [int(b) for b in bits], big.to_float(inverse, FRAC)

    bits, inverse = mpc.run(run())
    assert bits == [1, 1, 1, 0, 0, 0, 0]
    assert inverse == pytest.approx([1.0, 2.0, 1e3, 3000.0], rel=1e-9)


def test_binary_outcome_is_zero_one_and_depends_on_the_score() -> None:
    score = np.linspace(-10, 10, 20_000)
    y = binary_outcome(score, np.random.default_rng(0))
    assert set(np.unique(y)) == {0.0, 1.0}
    assert 0.45 < y.mean() < 0.55 and y[:5000].mean() < 0.2 < 0.8 < y[-5000:].mean()


def test_glm_specs_are_checked() -> None:
    with pytest.raises(SpecError, match="l1_ratio"):
        _spec(0.1, 1.5)
    with pytest.raises(SpecError, match="balanced"):
        RegressionSpec(ModelKind.LASSO, (0.1,), STUDY.ranges, STUDY.target, balanced_class_weights=True)
    with pytest.raises(SpecError, match="metrics"):
        _spec(0.1, 1.0, metrics=("r2",))
    with pytest.raises(SpecError, match="not supported"):
        _spec(0.1, 1.0, standardize=True)


def test_three_parties_agree_and_the_helper_learns_nothing() -> None:
    args = [
        "--records",
        str(ROWS),
        "--features",
        str(FEATURES),
        "--seed",
        str(SEED),
        "--kind",
        "logistic",
        "--alpha",
        "0.05",
        "--l1-ratio",
        "1",
        "--metric",
        "accuracy",
    ]
    reports = run_local(args)
    assert "result" not in reports[2]
    assert reports[0]["result"] == reports[1]["result"]
    study = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "binary", seed=SEED)
    table = deal(study.table, study.owners, np.random.default_rng(SEED)).table
    spec = RegressionSpec(ModelKind.LOGISTIC, (0.05,), study.ranges, study.target, l1_ratio=1.0)
    exact = fit_glm_exact(*split_table(table, spec), spec)
    secure = np.asarray(reports[0]["result"]["coefficients"])
    assert _relative(secure, exact.coefficients) <= 1e-6
    assert list(secure == 0) == list(exact.coefficients == 0)


def _svm(alpha: float, **kw: Any) -> RegressionSpec:
    return RegressionSpec(ModelKind.SVM, (alpha,), STUDY.ranges, STUDY.target, l1_ratio=0.0, **kw)


@pytest.mark.parametrize("alpha", [0.001, 0.1])
def test_svm_twin_exact_and_lbfgs_agree(alpha: float) -> None:
    from services.testkit.glm_reference import fit_svm_lbfgs

    spec = _svm(alpha)
    x, y = split_table(STUDY.table, spec)
    exact = fit_glm_exact(x, y, spec)
    assert _relative(fit_glm_plain(x, y, spec).coefficients, exact.coefficients) <= 1e-9
    assert _relative(fit_svm_lbfgs(x, y, spec).coefficients, exact.coefficients) <= 1e-6


@pytest.mark.parametrize("alpha", [0.001, 0.1])
def test_one_party_svm_matches_the_exact_optimum(mpc: Any, alpha: float) -> None:
    spec = _svm(alpha, metrics=("accuracy", "recall"))
    result = mpc.run(secure_fit_glm(mpc, encode(STUDY.table), spec))
    assert result is not None
    x, y = split_table(STUDY.table, spec)
    exact = fit_glm_exact(x, y, spec)
    assert _relative(result.coefficients, exact.coefficients) <= 1e-6
    assert abs(result.intercept - exact.intercept) <= 1e-6 * max(1.0, abs(exact.intercept))
    predicted = (x @ exact.coefficients + exact.intercept > 0).astype(float)
    assert dict(result.metrics)["accuracy"] == pytest.approx(float(np.mean(predicted == y)), abs=1e-8)
    assert dict(result.metrics)["recall"] == pytest.approx(float(predicted @ y / y.sum()), abs=1e-8)


def test_no_stopping_check_before_the_fourth_iteration(mpc: Any) -> None:
    spec = _spec(0.05, 1.0, iterations=3)
    assert make_glm_plan(spec, ROWS).checks == (False, False, False)
    result = mpc.run(secure_fit_glm(mpc, encode(STUDY.table), spec))
    assert result is not None and result.iterations == 3
    x, y = split_table(STUDY.table, spec)
    assert _relative(result.coefficients, fit_glm_plain(x, y, spec).coefficients) <= 1e-6


def test_the_hinge_loss_is_refused_until_built() -> None:
    with pytest.raises(NotImplementedError, match="hinge"):
        make_glm_plan(_svm(0.01, squared_hinge=False), ROWS)
