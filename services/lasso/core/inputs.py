"""This party's input to MPC: its share blocks laid out over the study's columns.

Column order (the same at every party, fixed by the approved spec): the features in
`feature_names` order (the first data owner's, then the second's), then the target.
A party holds shares of some columns only — an owner none of its own columns, the
helper all — and contributes 0 for the rest, so that over the integers

    S_0 + S_1 + S_2 = X' = round(X·2^f) + 2^(ℓ−1)      (the joined, encoded table).
"""

from __future__ import annotations

from collections.abc import Sequence

from riskmesh.v1 import common_pb2
from services.join.core import shares as join_shares
from services.join.core.errors import SpecError
from services.join.core.shares import ShareMatrix
from services.lasso.core.blocks import ShareBlock, ShareError
from services.study.spec import feature_names, owner_orgs, target_name


def study_columns(spec: common_pb2.StudySpec) -> tuple[str, ...]:
    return (*feature_names(spec), target_name(spec))


def column_owners(spec: common_pb2.StudySpec) -> tuple[int, ...]:
    """Per study column, the MPC party id (0 or 1) of the data owner that contributed it."""
    owners = owner_orgs(spec)
    by_name = {c.name: owners.index(o.org) for o in spec.owners for c in [*o.features, o.target] if c.name}
    return tuple(by_name[name] for name in study_columns(spec))


def assemble(blocks: Sequence[ShareBlock], columns: Sequence[str]) -> list[list[int]]:
    """This party's matrix over `columns`: its blocks' values, 0 where it holds nothing
    (the join core's `shares.assemble`, with its errors as ShareError)."""
    if not blocks:
        raise ShareError("this party has no share blocks")
    matrices = [ShareMatrix(tuple(b.columns), b.values) for b in blocks]
    try:
        return join_shares.assemble(columns, matrices, blocks[0].rows).values
    except SpecError as exc:
        raise ShareError(f"share blocks do not fit the study's columns: {exc}") from None
