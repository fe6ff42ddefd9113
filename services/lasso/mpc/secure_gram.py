"""Normalised covariances and means of row sets, from the parties' local Gram products.

Maths. For a row set R of n rows (the join, or a fold's training or validation
rows) every party holds degree-2t shares of P = Σ_R x′x′ᵀ and degree-t shares
of s = Σ_R x′ (``secure_input``), x′ = round(x·2^32) + 2^63 the join's encoding.
Locally, N = n·P − s sᵀ = n²·2^64·Cov(x) exactly: adding a constant to a
column changes neither side, so the public offset needs no correction. The
range-normalised covariance Ĉ_ij = Cov_ij/(h_i h_j) (h the declared
half-ranges, so |Ĉ| ≤ 1) and means μ̂_j = (mean_j − mid_j)/h_j follow by
dividing by public constants (``scale_down``: two truncation rounds for all
entries of all row sets), at ``FRAC_IN`` = 40 fractional bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.lasso.core.plan import SolverPlan
from services.lasso.mpc.secure_input import FoldSums
from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]

FRAC_TABLE = 32  # fractional bits of the join's encoding
ENCODING_OFFSET = 1 << 63  # the join's public offset 2^(ℓ−1), ℓ = 64
FRAC_IN = 40  # fractional bits of Ĉ and μ̂


def gram_bits(plan: SolverPlan) -> int:
    """Bits of N = n²·2^64·Cov for the plan's rows and declared ranges (plus margin)."""
    return math.ceil(2 * math.log2(plan.n_rows) + 2 * FRAC_TABLE + 2 * math.log2(max(plan.halves))) + 3


@dataclass(frozen=True)
class Moments:
    """Shares (F_in, frac 40) of Ĉ ((S, c, c), features then target) and μ̂ ((S, c))."""

    cov: ObjectArray
    mean: ObjectArray


def row_sets(sums: list[FoldSums]) -> list[tuple[ObjectArray, ObjectArray, int]]:
    """(P, s, n) for the whole join, then per fold its training and validation rows."""
    total_p = sum((f.gram for f in sums), np.zeros_like(sums[0].gram))
    total_s = sum((f.sums for f in sums), np.zeros_like(sums[0].sums))
    total_n = sum(f.rows for f in sums)
    sets = [(total_p, total_s, total_n)]
    if len(sums) > 1:
        for f in sums:
            sets.append((total_p - f.gram, total_s - f.sums, total_n - f.rows))
            sets.append((f.gram, f.sums, f.rows))
    return sets


async def scale_down(ops: FieldOps, x: ObjectArray, divisor: npt.NDArray[np.float64]) -> ObjectArray:
    """Shares of x/divisor at frac 40 (degree t), for |x| ≤ divisor·(1 + ε), public divisors.

    With E_i = ⌊log₂ divisor_i⌋ + 1 and top = max E_i: round 1 shifts every
    entry left by top − E_i (exact) and truncates all by cut = top − 48, so
    each entry is ≈ x_i·2^(48 − E_i) < 2^48; round 2 multiplies by
    c_i = round(2^(88 − top + E_i + cut)/divisor_i) ∈ (2^39, 2^41) and truncates
    by 48. Relative error ≤ 2^−39, absolute ≤ a few 2^−40. Accepts degree-2t input.
    """
    flat_x, flat_div = x.reshape(-1), divisor.reshape(-1)
    exps = [math.floor(math.log2(v)) + 1 for v in flat_div]
    top = max(exps)
    cut = max(top - 48, 0)
    shifts = np.array([1 << (top - e) for e in exps], dtype=object)
    lowered = await ops.trunc((flat_x * shifts) % ops.p, cut, top + 2, degree2t=True)
    factors = np.array(
        [round(2.0 ** (88 - top + e + cut) / v) for e, v in zip(exps, flat_div, strict=False)], dtype=object
    )
    scaled = await ops.trunc(lowered * factors, 48, 92, degree2t=True)
    return scaled.reshape(x.shape)


async def moments(ops: FieldOps, sums: list[FoldSums], plan: SolverPlan, order: list[int]) -> Moments:
    """Ĉ and μ̂ of every row set of ``row_sets`` (columns in ``order``: features, then the target)."""
    sets = row_sets(sums)
    p = ops.p
    idx = np.array(order)
    halves = np.array(plan.halves)
    offsets = np.array([ENCODING_OFFSET + round(mid * 2.0**FRAC_TABLE) for mid in plan.mids], dtype=object)
    blocks, divisors = [], []
    for gram, total, n in sets:
        gram, total = gram[np.ix_(idx, idx)], total[idx]
        centred = (n * gram - np.outer(total, total)) % p  # n²·2^64·Cov, degree 2t
        shifted = (total - n * offsets) % p  # n·2^32·(mean − mid), degree t
        blocks += [centred.reshape(-1), shifted]
        divisors += [
            (n * n * 2.0 ** (2 * FRAC_TABLE) * np.outer(halves, halves)).reshape(-1),
            n * 2.0**FRAC_TABLE * halves,
        ]
    scaled = await scale_down(ops, np.concatenate(blocks), np.concatenate(divisors))
    c = len(order)
    per_set = scaled.reshape(len(sets), c * c + c)
    return Moments(per_set[:, : c * c].reshape(len(sets), c, c), per_set[:, c * c :])


# ---- one batch of fits ----------------------------------------------------------------------------
