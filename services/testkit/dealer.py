"""Test-only dealer: a plaintext table → the three additive integer share matrices
the secure join leaves behind (used by tests and benchmarks, never by services).

Encoding (as ``services/join``): x′ = round(x·2^f) + 2^(ℓ−1) with f = 32,
ℓ = 64 (half-to-even rounding, numpy ``rint``). Shares, like the join's
(``services/join/core/shares.py``), per column owned by owner A (party 0):

    A: 0,   B: x′ + r,   H: −r          (r uniform in [0, 2^(ℓ+σ)), σ = 40)

and symmetrically for owner B's (party 1) columns, so that
S_A + S_B + S_H = X′ over the integers. Rows are permuted uniformly at random
first (the helper's π), so no row order survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FRACTIONAL_BITS = 32
VALUE_BITS = 64
SIGMA_BITS = 40
OFFSET = 1 << (VALUE_BITS - 1)

ObjectMatrix = npt.NDArray[np.object_]


@dataclass(frozen=True)
class DealtShares:
    """The three parties' share matrices (A, B, H), and the permuted plaintext table."""

    shares: tuple[ObjectMatrix, ObjectMatrix, ObjectMatrix]
    table: npt.NDArray[np.float64]

    def __repr__(self) -> str:
        rows, cols = self.table.shape
        return f"DealtShares(rows={rows}, columns={cols})"


def encode(table: npt.ArrayLike) -> ObjectMatrix:
    """x′ = round(x·2^32) + 2^63 as Python ints (ValueError if |x| ≥ 2^31)."""
    values = np.asarray(table, dtype=np.float64)
    scaled = np.rint(values * float(1 << FRACTIONAL_BITS))
    if not np.all(np.abs(scaled) < OFFSET):
        raise ValueError("a value is outside the fixed-point range |x| < 2^31")
    return scaled.astype(np.int64).astype(object) + OFFSET


def decode(encoded: ObjectMatrix) -> npt.NDArray[np.float64]:
    """Inverse of ``encode``: (x′ − 2^63)/2^32."""
    centred = np.asarray(encoded, dtype=object) - OFFSET
    return centred.astype(np.float64) / float(1 << FRACTIONAL_BITS)


def _masks(rng: np.random.Generator, shape: tuple[int, int]) -> ObjectMatrix:
    """Uniform integers in [0, 2^(ℓ+σ)) = [0, 2^104) (two 52-bit halves)."""
    bits = (VALUE_BITS + SIGMA_BITS) // 2
    hi = rng.integers(0, 1 << bits, size=shape, dtype=np.int64).astype(object)
    lo = rng.integers(0, 1 << bits, size=shape, dtype=np.int64).astype(object)
    return (hi << bits) | lo


def deal(
    table: npt.ArrayLike,
    owners: Sequence[int],
    rng: np.random.Generator | None = None,
) -> DealtShares:
    """Permute the rows, encode, and split into the join's three additive shares.

    ``owners[j]`` is 0 (owner A) or 1 (owner B): who contributed column j.
    """
    rng = rng or np.random.default_rng()
    values = np.asarray(table, dtype=np.float64)
    if values.ndim != 2 or len(owners) != values.shape[1] or set(owners) - {0, 1}:
        raise ValueError("owners must give 0 or 1 for every column")
    values = values[rng.permutation(len(values))]
    encoded = encode(values)
    masks = _masks(rng, values.shape)
    masked = encoded + masks
    share_a, share_b = (
        np.zeros(values.shape, dtype=np.int64).astype(object),
        np.zeros(values.shape, dtype=np.int64).astype(object),
    )
    for j, owner in enumerate(owners):
        # The owner itself keeps nothing of its column; the other owner holds x' + r.
        (share_b if owner == 0 else share_a)[:, j] = masked[:, j]
    return DealtShares((share_a, share_b, -masks), values)


def reconstruct(shares: Sequence[ObjectMatrix]) -> npt.NDArray[np.float64]:
    """Decode the sum of the three share matrices (for tests)."""
    total = np.asarray(shares[0], dtype=object) + np.asarray(shares[1], dtype=object)
    return decode(total + np.asarray(shares[2], dtype=object))
