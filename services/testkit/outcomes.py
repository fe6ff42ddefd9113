"""Outcomes other than a continuous score, derived from a generated continuous target
(tests, benchmarks, the demo): a yes/no outcome for logistic regression and the SVM
("readmitted within 30 days"), a count for Poisson regression ("hospitalisation days").

The functions take the continuous target the synthetic generators make (a linear
function of the features plus noise) and draw the new outcome from it, so the features
keep their effect and the known sparse true weights keep their zero pattern:

    binary:  y ~ Bernoulli(σ((t − median(t))/scale)),      scale = std(t)/2 by default
    count:   y ~ Poisson(exp(log(mean) + spread·(t − mean(t))/std(t))), capped at ``cap``

Adapters apply them to services/testkit/synthetic.py's tables (the regression's
``JoinedTable`` and the owners' ``StudyData``) and declare the new target range ([0, 1]
for a binary outcome, [0, cap] for counts).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from riskmesh.v1 import common_pb2
from services.lasso.core.params import ColumnRange
from services.testkit.synthetic import JoinedTable, StudyData

Vector = npt.NDArray[np.float64]

BINARY_NAME = "readmitted"
COUNT_NAME = "hospital_days"
COUNT_CAP = 120.0


def binary_outcome(target: Vector, rng: np.random.Generator, scale: float | None = None) -> Vector:
    """0/1 draws with log-odds (t − median)/scale: about half the rows are positive."""
    t = np.asarray(target, dtype=np.float64)
    spread = scale if scale is not None else max(float(np.std(t)) / 2, 1e-12)
    odds = (t - float(np.median(t))) / spread
    return (rng.random(len(t)) < 1 / (1 + np.exp(-odds))).astype(np.float64)


def count_outcome(
    target: Vector, rng: np.random.Generator, mean: float = 2.0, spread: float = 0.5, cap: float = COUNT_CAP
) -> Vector:
    """Poisson draws with log-mean log(mean) + spread·(standardised t), capped at ``cap``."""
    t = np.asarray(target, dtype=np.float64)
    z = (t - float(np.mean(t))) / max(float(np.std(t)), 1e-12)
    return np.minimum(rng.poisson(mean * np.exp(spread * z)), cap).astype(np.float64)


def _draw(kind: str, target: Vector, rng: np.random.Generator) -> tuple[Vector, str, tuple[float, float]]:
    if kind == "binary":
        return binary_outcome(target, rng), BINARY_NAME, (0.0, 1.0)
    if kind == "count":
        return count_outcome(target, rng), COUNT_NAME, (0.0, COUNT_CAP)
    raise ValueError(f"unknown outcome {kind!r}; expected 'binary' or 'count'")


def study_with_outcome(study: JoinedTable, kind: str, seed: int = 0) -> JoinedTable:
    """``study`` with its target column replaced by a binary or count outcome."""
    values, name, (low, high) = _draw(kind, study.table[:, study.target], np.random.default_rng(seed))
    table = study.table.copy()
    table[:, study.target] = values
    names = list(study.names)
    names[study.target] = name
    ranges = list(study.ranges)
    ranges[study.target] = ColumnRange(low, high)
    return dataclasses.replace(study, table=table, names=tuple(names), ranges=tuple(ranges))


def data_with_outcome(data: StudyData, kind: str, seed: int = 0) -> StudyData:
    """``data`` with the insurer's target replaced by a binary or count outcome (same patients, same order)."""
    owner = data.insurer
    if owner.target is None:
        raise ValueError("the insurer's table has no target")
    values, name, (low, high) = _draw(kind, owner.values[:, -1], np.random.default_rng(seed))
    table = owner.values.copy()
    table[:, -1] = values
    target = common_pb2.ColumnSpec(name=name, min=low, max=high)
    return dataclasses.replace(data, insurer=dataclasses.replace(owner, values=table, target=target))
