"""Synthetic study data in the shape of the pilot: an insurer and a hospital holding
different facts about partly the same patients, with a known sparse true model.

insurer  (target owner): hospitalisation days (target) + care use
hospital:                lifestyle (exercise, smoking, BMI, ...)

Patients are identified by birth date + postal code, written in mixed formats on purpose
(the join normalises them). `reference_join` gives the plaintext inner join that only
tests, the demo and benchmarks may compute, to compare the secure result with;
`joined_table` is that join as the secure regression sees it (study column order,
declared ranges, each column's owner), and `make_joined_table` makes one directly
(every patient at both owners), for the regression's tests and benchmarks.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from riskmesh.v1 import common_pb2
from services.lasso.core.params import ColumnRange

# Named columns for the demo: (name, low, high) of the declared range.
INSURER_FEATURES = [("gp_visits", 0, 60), ("prescriptions", 0, 80), ("specialist_visits", 0, 40), ("age", 0, 110)]
HOSPITAL_FEATURES = [
    ("exercise_hours_week", 0, 40),
    ("smoker", 0, 1),
    ("bmi", 10, 70),
    ("alcohol_units_week", 0, 100),
    ("sleep_hours", 0, 16),
]
TARGET = ("hospitalisation_days", -50, 400)


@dataclass
class OwnerTable:
    org: str
    ids: list[tuple[str, str]]  # (birth date as written, postal code as written)
    canonical: list[str]  # normalised "YYYY-MM-DD|POSTAL" (test/reference only)
    columns: list[common_pb2.ColumnSpec]
    values: np.ndarray  # rows × columns, in `columns` order (target last at its owner)
    target: common_pb2.ColumnSpec | None

    def write_csv(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        names = [c.name for c in self.columns] + ([self.target.name] if self.target else [])
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["birth_date", "postal_code", *names])
            for (birth, postal), row in zip(self.ids, self.values, strict=False):
                writer.writerow([birth, postal, *(f"{v:.6f}" for v in row)])
        return path


@dataclass
class StudyData:
    insurer: OwnerTable
    hospital: OwnerTable
    true_weights: dict[str, float]


def _patients(rng: np.random.Generator, n: int) -> list[tuple[dt.date, str]]:
    seen: set[tuple[dt.date, str]] = set()
    out = []
    start = dt.date(1930, 1, 1)
    while len(out) < n:
        birth = start + dt.timedelta(days=int(rng.integers(0, 27000)))
        postal = (
            f"{int(rng.integers(1000, 10000))}{chr(65 + int(rng.integers(0, 26)))}{chr(65 + int(rng.integers(0, 26)))}"
        )
        if (birth, postal) not in seen:
            seen.add((birth, postal))
            out.append((birth, postal))
    return out


def _written(birth: dt.date, postal: str, style: int) -> tuple[str, str]:
    """The same ID as different source systems write it."""
    if style == 0:
        return birth.isoformat(), postal
    if style == 1:
        return birth.strftime("%d-%m-%Y"), f"{postal[:4]} {postal[4:].lower()}"
    return birth.strftime("%d/%m/%Y"), postal.lower()


def make_study_data(
    records: int, overlap: float = 0.5, features: int | None = None, seed: int = 7, noise: float = 1.0
) -> StudyData:
    """`records` rows per owner, `overlap` of each owner's rows shared with the other.

    Without `features`: the named demo columns. With `features` = d: generic columns
    x1..xd split between the owners (insurer gets the first half), d/5 non-zero weights.
    """
    rng = np.random.default_rng(seed)
    shared = int(round(records * overlap))
    people = _patients(rng, 2 * records - shared)
    insurer_people = people[:records]
    hospital_people = people[records - shared : 2 * records - shared]
    if features is None:
        ins_cols, hos_cols = INSURER_FEATURES, HOSPITAL_FEATURES
    else:
        if features < 2:
            raise ValueError("need at least 2 features")
        half = (features + 1) // 2
        ins_cols = [(f"x{i + 1}", -10, 10) for i in range(half)]
        hos_cols = [(f"x{i + 1}", -10, 10) for i in range(half, features)]
    everyone = {p: i for i, p in enumerate(people)}
    n_all = len(people)
    # Every person gets a value for every column; each owner sees only its own columns.
    raw = {name: _column(rng, name, lo, hi, n_all) for name, lo, hi in [*ins_cols, *hos_cols]}
    names = [c[0] for c in ins_cols + hos_cols]
    weights = _true_weights(names, features is None)
    target = sum(weights[n] * raw[n] for n in names) + 2.0 + noise * rng.standard_normal(n_all)
    target = np.clip(target, TARGET[1], TARGET[2])

    def table(org: str, who: list, cols: list, with_target: bool) -> OwnerTable:
        idx = [everyone[p] for p in who]
        values = np.column_stack([raw[c[0]][idx] for c in cols] + ([target[idx]] if with_target else []))
        order = rng.permutation(len(who))  # each owner's file has its own order
        ids = [_written(*who[i], int(rng.integers(0, 3))) for i in order]
        canonical = [f"{who[i][0].isoformat()}|{who[i][1]}" for i in order]
        specs = [common_pb2.ColumnSpec(name=n, min=lo, max=hi) for n, lo, hi in cols]
        tspec = common_pb2.ColumnSpec(name=TARGET[0], min=TARGET[1], max=TARGET[2]) if with_target else None
        return OwnerTable(org, ids, canonical, specs, values[order], tspec)

    return StudyData(
        table("insurer", insurer_people, ins_cols, True), table("hospital", hospital_people, hos_cols, False), weights
    )


def _column(rng: np.random.Generator, name: str, lo: float, hi: float, n: int) -> np.ndarray:
    if name == "smoker":
        return (rng.random(n) < 0.25).astype(float)
    if name == "bmi":
        return np.clip(rng.normal(26, 4, n), lo, hi)
    if name == "age":
        return rng.uniform(18, 95, n).round()
    if name.startswith("x"):
        return np.clip(rng.standard_normal(n) * 2.0, lo, hi)
    return np.clip(rng.gamma(2.0, (hi - lo) / 12, n), lo, hi).round(1)


def _true_weights(names: list[str], named: bool) -> dict[str, float]:
    if named:
        known = {"gp_visits": 0.35, "age": 0.08, "smoker": 3.0, "bmi": 0.25, "exercise_hours_week": -0.4}
        return {n: known.get(n, 0.0) for n in names}
    d = len(names)
    nonzero = max(1, d // 5)
    rng = np.random.default_rng(11)
    chosen = set(rng.choice(d, nonzero, replace=False).tolist())
    return {
        n: (float(rng.choice([-1, 1]) * rng.uniform(1.0, 3.0)) if i in chosen else 0.0) for i, n in enumerate(names)
    }


def reference_join(data: StudyData) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The plaintext inner join (feature names, X, y) — for comparisons only."""
    hospital_rows = {cid: i for i, cid in enumerate(data.hospital.canonical)}
    n_ins = len(data.insurer.columns)
    pairs = [(i, hospital_rows[cid]) for i, cid in enumerate(data.insurer.canonical) if cid in hospital_rows]
    x = np.array([np.concatenate([data.insurer.values[i, :n_ins], data.hospital.values[j]]) for i, j in pairs])
    y = np.array([data.insurer.values[i, n_ins] for i, _ in pairs])
    names = [c.name for c in data.insurer.columns] + [c.name for c in data.hospital.columns]
    return names, x, y


@dataclass(frozen=True)
class JoinedTable:
    """The plaintext inner join in study column order: the insurer's features, the
    hospital's, then the target; with the declared ranges and each column's owner
    (0 = insurer, 1 = hospital: the MPC party ids of the data owners)."""

    table: npt.NDArray[np.float64]
    names: tuple[str, ...]
    ranges: tuple[ColumnRange, ...]
    owners: tuple[int, ...]
    target: int


def joined_table(data: StudyData) -> JoinedTable:
    target = data.insurer.target
    if target is None:
        raise ValueError("the insurer's table has no target")
    names, x, y = reference_join(data)
    columns = [*data.insurer.columns, *data.hospital.columns, target]
    owners = [0] * len(data.insurer.columns) + [1] * len(data.hospital.columns) + [0]
    return JoinedTable(
        np.column_stack([x, y]),
        (*names, target.name),
        tuple(ColumnRange(c.min, c.max) for c in columns),
        tuple(owners),
        len(names),
    )


def make_joined_table(rows: int, features: int = 10, seed: int = 7, noise: float = 1.0) -> JoinedTable:
    """`rows` joined rows of `features` generic columns (`make_study_data` with every patient at both owners)."""
    return joined_table(make_study_data(rows, overlap=1.0, features=features, seed=seed, noise=noise))
