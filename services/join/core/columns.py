"""A numeric column of the study with the value range its owner declares.

The declared range is public (all parties approve it in the study spec). It
bounds the fixed-point encoding (``fixedpoint``) and lets the lasso scale
values inside MPC without looking at them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.join.core.errors import SpecError


@dataclass(frozen=True)
class ColumnSpec:
    """Name in the owner's CSV and the inclusive declared range [min, max]."""

    name: str
    min: float
    max: float

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise SpecError("a column name is empty")
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise SpecError(f"column {self.name!r}: declared range must be finite")
        if self.min > self.max:
            raise SpecError(f"column {self.name!r}: declared min is above max")


def check_distinct(names: Sequence[str]) -> None:
    """Raise SpecError if a column name occurs twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecError(f"column {name!r} is named twice in the study")
        seen.add(name)
