"""Test-only dealing of additive shares in the shape resharing produces (docs/design.md step 3).

    insurer (A): x'_B + r_B for B's columns     hospital (B): x'_A + r_A for A's columns
    helper  (H): −r_A for A's columns, −r_B for B's columns

with x' = round(x·2^f) + 2^(ℓ−1) and r uniform in [0, 2^(ℓ+σ)). Returns the blocks per
org and the encoded joined table (the plaintext oracle's input).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from riskmesh.v1 import common_pb2
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.inputs import study_columns
from services.study.spec import owner_columns, owner_orgs

FRACTIONAL_BITS = 32
VALUE_BITS = 64
SIGMA_BITS = 40
VALUE_BYTES = -(-(VALUE_BITS + SIGMA_BITS + 2) // 8)


def encode(x: float) -> int:
    return round(x * (1 << FRACTIONAL_BITS)) + (1 << (VALUE_BITS - 1))


def deal(
    spec: common_pb2.StudySpec, rows: Sequence[Sequence[float]], seed: int = 7
) -> tuple[dict[str, list[ShareBlock]], list[list[int]]]:
    """Blocks per org for the study's columns (`study_columns` order) and the encoded table."""
    rng = random.Random(seed)
    columns = study_columns(spec)
    table = [[encode(v) for v in row] for row in rows]
    a, b = owner_orgs(spec)
    helper = next(p.org for p in spec.parties if p.role == common_pb2.ROLE_HELPER)
    blocks: dict[str, list[ShareBlock]] = {a: [], b: [], helper: []}
    for owner, other in ((a, b), (b, a)):
        held = owner_columns(spec, owner)
        names = [c.name for c in held.features] + (
            [held.target.name] if held.HasField("target") and held.target.name else []
        )
        index = [columns.index(n) for n in names]
        masks = [[rng.randrange(1 << (VALUE_BITS + SIGMA_BITS)) for _ in index] for _ in table]
        masked = [
            [row[k] + r for k, r in zip(index, mask, strict=False)] for row, mask in zip(table, masks, strict=False)
        ]
        negated = [[-r for r in mask] for mask in masks]
        blocks[other].append(ShareBlock(tuple(names), masked, VALUE_BYTES, FRACTIONAL_BITS, VALUE_BITS, SIGMA_BITS))
        blocks[helper].append(ShareBlock(tuple(names), negated, VALUE_BYTES, FRACTIONAL_BITS, VALUE_BITS, SIGMA_BITS))
    return blocks, table
