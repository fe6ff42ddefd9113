"""The secure Poisson fit against its plaintext twin, the exact optimum and scikit-learn.

In-process runs use MPyC with one party (``-M1``: the same code, threshold 0); the
three-party run starts three processes over MPyC's own TCP (``local_run``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import mean_poisson_deviance

from services.bench.local_run import run_local
from services.lasso.core.glm_plan import DEFAULT_OUTER_ITERATIONS
from services.lasso.core.params import ColumnRange, ModelKind, RegressionSpec
from services.lasso.core.poisson_plan import START_STEP, make_poisson_plan
from services.lasso.mpc.secure_glm import FRAC, W_FRAC
from services.lasso.mpc.secure_poisson import _fields, _start, exp_ratio, secure_fit_poisson
from services.testkit.dealer import deal, encode
from services.testkit.glm_reference import (
    fit_poisson_exact,
    fit_poisson_plain,
    fit_poisson_sklearn,
    glm_rows,
    poisson_start,
    solve_poisson_plain,
    split_table,
)
from services.testkit.outcomes import COUNT_CAP, count_outcome, study_with_outcome
from services.testkit.synthetic import JoinedTable, make_joined_table

ROWS, FEATURES, SEED = 300, 4, 3
STUDY = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "count", seed=SEED)
METRICS = ("mse", "r2", "adjusted_r2", "deviance")


def _study(rows: int, features: int, mean: float, spread: float, seed: int = SEED) -> JoinedTable:
    """A count outcome with a chosen mean and strength (outcomes.count_outcome)."""
    base = make_joined_table(rows, features, seed=seed)
    y = count_outcome(base.table[:, base.target], np.random.default_rng(seed), mean=mean, spread=spread)
    table = base.table.copy()
    table[:, base.target] = y
    ranges = list(base.ranges)
    ranges[base.target] = ColumnRange(0.0, COUNT_CAP)
    return dataclasses.replace(base, table=table, ranges=tuple(ranges))


def _spec(study: JoinedTable, alpha: float, rho: float, **kw: Any) -> RegressionSpec:
    return RegressionSpec(ModelKind.POISSON, (alpha,), study.ranges, study.target, l1_ratio=rho, **kw)


def _relative(w: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(w) - reference)) / np.max(np.abs(reference)))


# (rows, features, mean count, spread of the log-mean, alpha, l1_ratio): rare to frequent counts, L1 / L2 / EN.
TWIN_CASES = [
    (300, 4, 2.0, 0.5, 0.01, 1.0),
    (300, 4, 2.0, 0.5, 0.01, 0.0),
    (1000, 10, 0.3, 1.0, 0.003, 1.0),
    (1000, 10, 20.0, 1.0, 0.001, 0.5),
    (2000, 10, 2.0, 1.5, 0.001, 1.0),
    (3000, 20, 0.1, 1.0, 0.0003, 1.0),
]


@pytest.mark.parametrize("rows,features,mean,spread,alpha,rho", TWIN_CASES)
def test_plain_twin_reaches_the_exact_optimum(
    rows: int, features: int, mean: float, spread: float, alpha: float, rho: float
) -> None:
    study = _study(rows, features, mean, spread)
    spec = _spec(study, alpha, rho)
    x, y = split_table(study.table, spec)
    plain, exact = fit_poisson_plain(x, y, spec), fit_poisson_exact(x, y, spec)
    # The stopping rule ends at a Newton step ≤ 1e-3, which leaves about step² (goal 1e-4).
    assert _relative(plain.coefficients, exact.coefficients) <= 1e-6
    assert abs(plain.intercept - exact.intercept) <= 1e-6 * max(1.0, abs(exact.intercept))
    assert list(plain.coefficients == 0) == list(exact.coefficients == 0)
    plan = make_poisson_plan(spec, rows)
    _, b0, s_max, _ = solve_poisson_plain(plan, glm_rows(x, y, plan.glm))
    assert abs(b0 - math.log(np.mean(y))) <= START_STEP / 2
    assert s_max < plan.s_high  # the exponential's assumed range held at every iterate


@pytest.mark.parametrize("alpha", [0.01, 0.001])
def test_the_l2_objective_is_poisson_regressors_with_the_same_alpha(alpha: float) -> None:
    spec = _spec(STUDY, alpha, 0.0)
    x, y = split_table(STUDY.table, spec)
    exact, sklearn = fit_poisson_exact(x, y, spec), fit_poisson_sklearn(x, y, spec)
    assert _relative(sklearn.coefficients, exact.coefficients) <= 1e-8
    assert abs(sklearn.intercept - exact.intercept) <= 1e-8


@pytest.mark.parametrize("alpha,rho", [(0.01, 1.0), (0.01, 0.0), (0.003, 0.5), (0.05, 1.0)])
def test_one_party_matches_the_exact_optimum(mpc: Any, alpha: float, rho: float) -> None:
    spec = _spec(STUDY, alpha, rho, metrics=METRICS)
    result = mpc.run(secure_fit_poisson(mpc, encode(STUDY.table), spec))
    assert result is not None and result.joined == ROWS and not result.converged
    x, y = split_table(STUDY.table, spec)
    twin, exact = fit_poisson_plain(x, y, spec), fit_poisson_exact(x, y, spec)
    assert result.iterations == twin.iterations <= DEFAULT_OUTER_ITERATIONS  # the stopping rule, as the twin's
    assert _relative(result.coefficients, twin.coefficients) <= 1e-8
    assert _relative(result.coefficients, exact.coefficients) <= 1e-6  # a step ≤ 1e-3 leaves ~step²
    assert abs(result.intercept - exact.intercept) <= 1e-6 * max(1.0, abs(exact.intercept))
    assert list(np.asarray(result.coefficients) == 0) == list(exact.coefficients == 0)
    mu = np.exp(x @ exact.coefficients + exact.intercept)
    mse = float(np.mean((y - mu) ** 2))
    r2 = 1 - mse / float(np.var(y))
    expected = {
        "mse": mse,
        "r2": r2,
        "adjusted_r2": 1 - (1 - r2) * (ROWS - 1) / (ROWS - FEATURES - 1),
        "deviance": mean_poisson_deviance(y, mu),
    }
    for name, value in result.metrics:
        assert value == pytest.approx(expected[name], abs=1e-7), name


def test_an_l1_penalty_large_enough_zeroes_every_coefficient(mpc: Any) -> None:
    spec = _spec(STUDY, 20.0, 1.0)
    result = mpc.run(secure_fit_poisson(mpc, encode(STUDY.table), spec))
    assert result is not None and all(w == 0 for w in result.coefficients)
    assert result.intercept == pytest.approx(math.log(float(np.mean(STUDY.table[:, STUDY.target]))), abs=1e-8)


def test_rare_counts_with_strong_effects(mpc: Any) -> None:
    study = _study(1000, 6, 0.2, 1.5)
    spec = _spec(study, 0.002, 0.5)
    result = mpc.run(secure_fit_poisson(mpc, encode(study.table), spec))
    assert result is not None
    exact = fit_poisson_exact(*split_table(study.table, spec), spec)
    assert _relative(result.coefficients, exact.coefficients) <= 1e-6
    assert list(np.asarray(result.coefficients) == 0) == list(exact.coefficients == 0)


def test_start_and_exponential_are_within_their_documented_error(mpc: Any) -> None:
    spec = _spec(STUDY, 0.01, 1.0)
    plan = make_poisson_plan(spec, ROWS)
    fields = _fields(mpc, plan)
    big = fields.big
    s = np.concatenate([np.linspace(plan.s_high - 40, plan.s_high, 201), [0.0, -3.0, 2.5]])
    means = [1 / ROWS, 0.013, 1.0, 2.7, 55.0, COUNT_CAP]

    async def run() -> tuple[np.ndarray, np.ndarray, list[float]]:
        mu_f, mu_w = await exp_ratio(big, big.fixed(s, 2 * FRAC), plan)
        starts = [(await _start(big, big.fixed(m, FRAC), plan))[0] for m in means]
        return big.to_float(mu_f, FRAC), big.to_float(mu_w, W_FRAC), [float(big.to_float(b, FRAC)) for b in starts]

    mu_f, mu_w, starts = mpc.run(run())
    truth = np.exp(s)
    assert np.max(np.abs(mu_f - truth)) <= 1e-7  # absolute, with μ̃ up to 4m
    assert np.max(np.abs(mu_f - truth) / truth) <= 1e-9 + 2.0**-36 / truth.min()
    assert np.max(np.abs(mu_w - truth)) <= 2.0**-W_FRAC * 4
    for mean, start in zip(means, starts, strict=True):
        assert abs(start - math.log(mean)) <= START_STEP / 2 + 1e-9
        assert start == pytest.approx(poisson_start(plan, np.array([mean])), abs=1e-9)


def test_three_parties_agree_and_the_helper_learns_nothing() -> None:
    args = ["--records", str(ROWS), "--features", str(FEATURES), "--seed", str(SEED), "--kind", "poisson"]
    reports = run_local([*args, "--alpha", "0.1", "--l1-ratio", "1", "--metric", "deviance"])
    assert "result" not in reports[2]
    assert reports[0]["result"] == reports[1]["result"]
    study = study_with_outcome(make_joined_table(ROWS, FEATURES, seed=SEED), "count", seed=SEED)
    table = deal(study.table, study.owners, np.random.default_rng(SEED)).table
    spec = RegressionSpec(ModelKind.POISSON, (0.1,), study.ranges, study.target, l1_ratio=1.0)
    exact = fit_poisson_exact(*split_table(table, spec), spec)
    secure = np.asarray(reports[0]["result"]["coefficients"])
    assert _relative(secure, exact.coefficients) <= 1e-6
    # Three parties round every truncation by ±1 unit: the revealed zeros must still be exact.
    assert list(secure == 0) == list(exact.coefficients == 0) and 0 < int(np.sum(secure == 0))
