"""Ill-conditioned study data (tests and benchmarks only): collinear, badly scaled features.

The shape of real clinical tables that defeat a plain first-order solver: features come in
groups of three measurements of the same quantity (pairwise correlation ≥ 0.99), their
units differ by six orders of magnitude (scales from 1e-3 to 1e3), and the target lives on
a small scale (values around 0.01–0.1). The target follows one member of some groups and,
in others, the *difference* of two members (a contrast: large coefficients of opposite sign
on nearly equal columns), the hardest case for support identification.

`make_collinear` gives the plaintext table with declared ranges; `collinear_study_data`
wraps it as the two owners' tables (the insurer holds the first half of the features and
the target, the hospital the rest) with patient IDs, like `synthetic.make_study_data`.
Values are rounded to 6 decimals, as the owners' CSV files carry them; `as_joined` applies
the join's fixed-point encoding (round(x·2^32)/2^32) to get exactly what the MPC sees.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from riskmesh.v1 import common_pb2
from services.testkit.synthetic import OwnerTable, StudyData

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]

GROUP_SIZE = 3
#: Within-group noise relative to the shared signal: corr ≥ 1/(1 + 0.08²) ≈ 0.9936.
NOISE_RANGE = (0.02, 0.08)
SCALE_RANGE = (1e-3, 1e3)
TARGET_SCALE = 0.01
DECIMALS = 6
#: Declared ranges: mean ± this many standard deviations (a generous but unit-aware declaration).
RANGE_SIGMAS = 6.0
FRACTIONAL_BITS = 32
TARGET_NAME = "outcome"


@dataclass(frozen=True)
class CollinearDesign:
    """A plaintext table: features x (rows × d), target y, declared ranges, names."""

    x: Matrix
    y: Vector
    names: tuple[str, ...]
    feature_ranges: tuple[tuple[float, float], ...]
    target_range: tuple[float, float]
    groups: tuple[int, ...]  # group index of every feature

    def alpha_max(self) -> float:
        """The smallest alpha at which the lasso solution is all zeros: max |xᵀ(y − ȳ)|/m."""
        centred = self.x - self.x.mean(axis=0)
        return float(np.max(np.abs(centred.T @ (self.y - self.y.mean()))) / len(self.y))


def make_collinear(rows: int, features: int = 30, seed: int = 0) -> CollinearDesign:
    """``rows`` records of ``features`` collinear, badly scaled features and a small-scale target."""
    if features < GROUP_SIZE or rows < 10:
        raise ValueError(f"need at least {GROUP_SIZE} features and 10 rows")
    rng = np.random.default_rng(seed)
    groups = -(-features // GROUP_SIZE)
    between = 0.3 * np.ones((groups, groups)) + 0.7 * np.eye(groups)  # groups mildly correlated too
    latent = rng.standard_normal((rows, groups)) @ np.linalg.cholesky(between).T
    group_of = np.arange(features) // GROUP_SIZE
    scales = np.logspace(np.log10(SCALE_RANGE[0]), np.log10(SCALE_RANGE[1]), features)[rng.permutation(features)]
    noise = rng.uniform(*NOISE_RANGE, features)
    offsets = scales * rng.uniform(-3.0, 3.0, features)
    x = offsets + scales * (latent[:, group_of] + noise * rng.standard_normal((rows, features)))
    beta = _true_weights(rng, group_of, scales)
    signal = (x - x.mean(axis=0)) @ beta
    y = TARGET_SCALE * (signal + 0.3 * rng.standard_normal(rows)) + 5 * TARGET_SCALE
    x, y = np.round(x, DECIMALS), np.round(y, DECIMALS)
    return CollinearDesign(
        x,
        y,
        tuple(f"m{j + 1}" for j in range(features)),
        _declared(x),
        _declared(y[:, None])[0],
        tuple(int(g) for g in group_of),
    )


def _true_weights(rng: np.random.Generator, group_of: npt.NDArray[np.int64], scales: Vector) -> Vector:
    """Per group: no effect (30%), one member (≈30%), or a contrast of two members (≈40%)."""
    beta = np.zeros(len(group_of))
    for g in range(int(group_of.max()) + 1):
        members = np.flatnonzero(group_of == g)
        if rng.random() < 0.3:
            continue
        j = int(rng.choice(members))
        beta[j] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0) / scales[j]
        if len(members) > 1 and rng.random() < 0.6:
            k = int(members[(list(members).index(j) + 1) % len(members)])
            beta[k] = -beta[j] * scales[j] / scales[k] * rng.uniform(0.7, 1.0)
    return beta


def _declared(values: Matrix) -> tuple[tuple[float, float], ...]:
    """mean ± RANGE_SIGMAS·σ per column, rounded outwards to 3 significant digits."""
    out = []
    for column in values.T:
        mean, sd = float(column.mean()), float(column.std())
        lo, hi = mean - RANGE_SIGMAS * sd, mean + RANGE_SIGMAS * sd
        digits = -int(np.floor(np.log10(max(abs(lo), abs(hi), 1e-12)))) + 2
        step = 10.0**-digits
        out.append((float(np.floor(lo / step) * step), float(np.ceil(hi / step) * step)))
    return tuple(out)


def as_joined(values: npt.ArrayLike) -> Matrix:
    """The join's fixed-point encoding round(x·2^32)/2^32 (what the secure regression computes on)."""
    scale = float(1 << FRACTIONAL_BITS)
    return np.rint(np.asarray(values, dtype=np.float64) * scale) / scale


def pairwise_correlations(design: CollinearDesign) -> Vector:
    """Correlation of every pair of features within a group (the family's defining property)."""
    corr = np.corrcoef(design.x, rowvar=False)
    groups = np.asarray(design.groups)
    pairs = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups)) if groups[i] == groups[j]]
    return np.array([corr[i, j] for i, j in pairs])


def collinear_study_data(records: int, features: int = 30, seed: int = 0) -> StudyData:
    """The design as two owners' tables over the same ``records`` patients (every record joins).

    The insurer holds the first ⌈d/2⌉ features and the target, the hospital the rest; each
    file has its own row order and its own ID spelling, as `synthetic.make_study_data`.
    """
    design = make_collinear(records, features, seed)
    rng = np.random.default_rng(seed + 1)
    people = _patients(rng, records)
    half = (features + 1) // 2

    def table(org: str, columns: range, with_target: bool) -> OwnerTable:
        order = rng.permutation(records)
        values = design.x[:, list(columns)]
        if with_target:
            values = np.column_stack([values, design.y])
        specs = [
            common_pb2.ColumnSpec(
                name=design.names[j], min=design.feature_ranges[j][0], max=design.feature_ranges[j][1]
            )
            for j in columns
        ]
        low, high = design.target_range
        target = common_pb2.ColumnSpec(name=TARGET_NAME, min=low, max=high) if with_target else None
        ids = [_spelled(*people[i], int(rng.integers(0, 3))) for i in order]
        canonical = [f"{people[i][0].isoformat()}|{people[i][1]}" for i in order]
        return OwnerTable(org, ids, canonical, specs, values[order], target)

    insurer = table("insurer", range(half), True)
    hospital = table("hospital", range(half, features), False)
    return StudyData(insurer, hospital, {})


def _patients(rng: np.random.Generator, n: int) -> list[tuple[dt.date, str]]:
    """n distinct (birth date, postal code) pairs."""
    seen: set[tuple[dt.date, str]] = set()
    out: list[tuple[dt.date, str]] = []
    start = dt.date(1930, 1, 1)
    while len(out) < n:
        birth = start + dt.timedelta(days=int(rng.integers(0, 27000)))
        letters = "".join(chr(65 + int(rng.integers(0, 26))) for _ in range(2))
        postal = f"{int(rng.integers(1000, 10000))}{letters}"
        if (birth, postal) not in seen:
            seen.add((birth, postal))
            out.append((birth, postal))
    return out


def _spelled(birth: dt.date, postal: str, style: int) -> tuple[str, str]:
    """The same ID as different source systems write it."""
    if style == 0:
        return birth.isoformat(), postal
    if style == 1:
        return birth.strftime("%d-%m-%Y"), f"{postal[:4]} {postal[4:].lower()}"
    return birth.strftime("%d/%m/%Y"), postal.lower()
