"""The plaintext twin's case set for the logistic fit's iteration counts (tests only).

A change to the number of iterations of the secure GLM fit (``glm_plan``: ADMM iterations,
Newton–Schulz steps, the stopping rule) is checked by running the plaintext twin
(``glm_reference.solve_plain_counted``) on every case here against the exact optimum and
against a reference plan: the same outer iteration at which the stopping rule stops, the same
zero pattern and an error within the accuracy goal.

The cases span m = 300 … 10,000 rows, d = 4 … 50 features, class shares 4 % … 52 % (the
outcome's offset is chosen for the share), L1 and elastic net, with and without balanced class
weights, and the benchmark's own data (``study_with_outcome``, default alpha).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.lasso.core.params import ColumnRange, ModelKind, RegressionSpec
from services.testkit.outcomes import study_with_outcome
from services.testkit.plain_reference import split_table
from services.testkit.synthetic import JoinedTable, make_joined_table

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TwinCase:
    """One logistic fit: the data (rows, features, class share or None for the bench's outcome, seed)
    and the spec's alpha, L1 ratio and class weighting."""

    rows: int
    features: int
    share: float | None
    balanced: bool
    alpha: float
    l1_ratio: float
    seed: int


def _grid() -> list[TwinCase]:
    sizes = [(300, 4), (1000, 10), (3000, 20), (10000, 10), (1000, 50), (10000, 50), (300, 10)]
    variants = [(0.5, False, 0.01, 1.0), (0.25, True, 0.003, 0.5), (0.07, False, 0.001, 1.0), (0.15, True, 0.05, 1.0)]
    return [
        TwinCase(m, d, share, balanced, alpha, rho, 11 * i + j)
        for i, (m, d) in enumerate(sizes)
        for j, (share, balanced, alpha, rho) in enumerate(variants)
    ]


#: 28 grid cases, two rare-event cases and four on the benchmark's data.
TWIN_CASES: tuple[TwinCase, ...] = (
    *_grid(),
    TwinCase(3000, 10, 0.04, False, 0.003, 1.0, 5),
    TwinCase(1000, 20, 0.06, True, 0.01, 1.0, 6),
    TwinCase(1000, 10, None, False, 0.01, 1.0, 1),
    TwinCase(10000, 10, None, False, 0.01, 1.0, 1),
    TwinCase(1000, 10, None, False, 0.01, 1.0, 7),
    TwinCase(5000, 10, None, False, 0.003, 1.0, 2),
)


def _with_share(study: JoinedTable, share: float, seed: int) -> JoinedTable:
    """The 0/1 outcome y ~ Bernoulli(σ((t − offset)/scale)), scale = std(t)/2, with the offset that makes
    the mean probability ``share`` (bisection)."""
    target = study.table[:, study.target]
    scale = max(float(np.std(target)) / 2, 1e-12)
    low, high = float(np.min(target)) - 20 * scale, float(np.max(target)) + 20 * scale
    for _ in range(100):
        offset = (low + high) / 2
        if np.mean(1 / (1 + np.exp(-(target - offset) / scale))) > share:
            low = offset
        else:
            high = offset
    odds = (target - offset) / scale
    y = (np.random.default_rng(seed).random(len(target)) < 1 / (1 + np.exp(-odds))).astype(np.float64)
    table = study.table.copy()
    table[:, study.target] = y
    ranges = list(study.ranges)
    ranges[study.target] = ColumnRange(0.0, 1.0)
    return dataclasses.replace(study, table=table, ranges=tuple(ranges))


def case_data(case: TwinCase) -> tuple[RegressionSpec, Matrix, npt.NDArray[np.float64]]:
    """(spec, x, y) of one case."""
    table = make_joined_table(case.rows, case.features, seed=case.seed)
    if case.share is None:
        study = study_with_outcome(table, "binary", seed=case.seed)
    else:
        study = _with_share(table, case.share, case.seed)
    spec = RegressionSpec(
        ModelKind.LOGISTIC,
        (case.alpha,),
        study.ranges,
        study.target,
        l1_ratio=case.l1_ratio,
        balanced_class_weights=case.balanced,
    )
    x, y = split_table(study.table, spec)
    return spec, x, y
