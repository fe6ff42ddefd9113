"""This party's input to MPC: its share blocks laid out over the study's columns.

Column order (the same at every party, fixed by the approved spec): the features in
`feature_names` order (the first data owner's, then the second's), then the target.
A party holds shares of some columns only — an owner none of its own columns, the
helper all — and contributes 0 for the rest, so that over the integers

    S_0 + S_1 + S_2 = X' = round(X·2^f) + 2^(ℓ−1)      (the joined, encoded table).
"""

from __future__ import annotations

from typing import Sequence

from riskmesh.v1 import common_pb2
from services.gateway.spec import feature_names, owner_orgs, target_name
from services.lasso.shares import ShareBlock, ShareError


def study_columns(spec: common_pb2.StudySpec) -> tuple[str, ...]:
    return (*feature_names(spec), target_name(spec))


def column_owners(spec: common_pb2.StudySpec) -> tuple[int, ...]:
    """Per study column, the MPC party id (0 or 1) of the data owner that contributed it."""
    owners = owner_orgs(spec)
    by_name = {c.name: owners.index(o.org) for o in spec.owners for c in [*o.features, o.target] if c.name}
    return tuple(by_name[name] for name in study_columns(spec))


def assemble(blocks: Sequence[ShareBlock], columns: Sequence[str]) -> list[list[int]]:
    """This party's matrix over `columns`: its blocks' values, 0 where it holds nothing."""
    if not blocks:
        raise ShareError("this party has no share blocks")
    rows = blocks[0].rows
    position = {name: k for k, name in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in range(rows)]
    seen: set[str] = set()
    for block in blocks:
        if block.rows != rows:
            raise ShareError("share blocks differ in their number of rows")
        for j, name in enumerate(block.columns):
            if name not in position or name in seen:
                raise ShareError(f"share column {name!r} is not a column of the study, or is held twice")
            seen.add(name)
            k = position[name]
            for row, values in zip(matrix, block.values):
                row[k] = values[j]
    return matrix
