"""Synthetic insurer × hospital joined tables with declared ranges (tests, benchmarks).

Columns follow the study order of the join: the insurer's (owner A, party 0)
first — five care-use features and the target ``risk`` — then the hospital's
(owner B, party 1) five lifestyle features (for d < 10 a subset of both), then, for d > 10, extra "lab"
features alternating between the owners (correlated in blocks of five, half
without effect). Values are clipped to the declared ranges, features are
moderately correlated (age ↔ care use, BMI ↔ exercise, ...) and several true
coefficients are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.lasso.core.params import ColumnRange


@dataclass(frozen=True)
class SyntheticStudy:
    """A plaintext joined table and its public description."""

    table: npt.NDArray[np.float64]
    names: tuple[str, ...]
    ranges: tuple[ColumnRange, ...]
    owners: tuple[int, ...]
    target: int


_A_NAMES = ("age", "hospital_days", "care_cost_keur", "gp_visits", "medications")
_B_NAMES = ("bmi", "smoker", "exercise_h", "alcohol_units", "sleep_h")
_A_RANGES = ((18, 95), (0, 120), (0, 250), (0, 60), (0, 25))
_B_RANGES = ((14, 60), (0, 1), (0, 30), (0, 60), (3, 13))
_TARGET_RANGE = (-60.0, 200.0)


def make_study(n_rows: int, n_features: int = 10, seed: int = 0) -> SyntheticStudy:
    """A table of ``n_rows`` × (``n_features`` + 1) columns.

    With fewer than 10 features, the first ⌈d/2⌉ insurer and ⌊d/2⌋ hospital
    features are kept (the target still depends on all ten).
    """
    if n_features < 2:
        raise ValueError("the synthetic study has at least 2 features")
    rng = np.random.default_rng(seed)
    n = n_rows
    age = rng.uniform(18, 92, n)
    frail = np.exp(0.035 * (age - 50))
    days = rng.poisson(0.8 * frail).astype(float)
    cost = rng.gamma(1.5, 2.0, n) * frail + 4.0 * days
    gp = rng.poisson(2.5 + 0.6 * frail + 0.3 * days).astype(float)
    meds = rng.poisson(0.5 + 0.8 * frail).astype(float)
    bmi = rng.normal(26.5, 4.5, n)
    smoker = rng.binomial(1, 0.22, n).astype(float)
    exercise = rng.gamma(2.0, 1.8, n) * np.exp(-0.04 * (bmi - 26.5)) * (1 - 0.3 * smoker)
    alcohol = rng.gamma(1.2, 5.0, n) * (1 + 0.5 * smoker)
    sleep = rng.normal(7.2, 1.1, n) - 0.05 * alcohol
    a_cols = [age, days, cost, gp, meds]
    b_cols = [bmi, smoker, exercise, alcohol, sleep]
    a_true = [0.45, 0.9, 0.0, 0.6, 0.0]
    b_true = [1.1, 9.0, -0.8, 0.0, -1.5]
    extra, extra_true, extra_ranges = [], [], []
    for k in range(n_features - 10):
        base = (bmi - 26.5) / 4.5 if k % 10 < 5 else (age - 55) / 21
        extra.append(0.6 * base + 0.8 * rng.normal(size=n))
        extra_true.append(1.5 if k % 2 == 0 else 0.0)
        extra_ranges.append((-6.0, 6.0))
    noise = rng.normal(0, 6.0, n)
    risk = -40 + sum(c * t for c, t in zip(a_cols + b_cols + extra, a_true + b_true + extra_true)) + noise
    ranges_a = [ColumnRange(float(lo), float(hi)) for lo, hi in _A_RANGES]
    ranges_b = [ColumnRange(float(lo), float(hi)) for lo, hi in _B_RANGES]
    columns: list[npt.NDArray[np.float64]] = [*a_cols, risk, *b_cols]
    names = [*_A_NAMES, "risk", *_B_NAMES]
    ranges = [*ranges_a, ColumnRange(*_TARGET_RANGE), *ranges_b]
    owners = [0] * 6 + [1] * 5
    for k, (col, (lo, hi)) in enumerate(zip(extra, extra_ranges)):
        columns.append(col)
        names.append(f"lab_{k + 1}")
        ranges.append(ColumnRange(lo, hi))
        owners.append(k % 2)
    if n_features < 10:
        keep = [*range(-(-n_features // 2)), 5, *range(6, 6 + n_features // 2)]
        columns, names = [columns[k] for k in keep], [names[k] for k in keep]
        ranges, owners = [ranges[k] for k in keep], [owners[k] for k in keep]
    table = np.column_stack(columns)
    lows = np.array([r.min for r in ranges])
    highs = np.array([r.max for r in ranges])
    table = np.clip(table, lows, highs)
    return SyntheticStudy(table, tuple(names), tuple(ranges), tuple(owners), target=names.index("risk"))
