"""The link functions of the GLMs on Shamir-shared vectors: sign, e^(−u), 1/(1 + v), σ(η).

All values are fixed point with ``frac`` fractional bits in the field of ``ops`` (F = 40
for the GLMs); every function is a fixed, public sequence of rounds (no data-dependent
branch). Only ``sign_bits`` compares; exponentials and reciprocals use products alone.

σ(η) for |η| < 2^(ETA_BITS − 1) (``glm_plan``):

1. b = [η < 0] by ``secure_compare`` on η rounded to 2^−SIGN_FRAC in a small field
   (a wrong b only for |η| < 2^(1−SIGN_FRAC): the three-party truncation is off by −1 … +2 grid
   units, ``secure_compare.trunc_convert``; the next steps tolerate it); η's truncation
   and its move to the small field share one round. The comparison's random bits come from the
   pairwise PRSS keys (``FieldOps.pair_bits``: two rounds, started a round earlier by the caller,
   no square roots), or by default from ``FieldOps.random_bits`` in the conversion's round.
2. u = (1 − 2b)·η > −2^(1−SIGN_FRAC), so v = e^(−u) ∈ (0, e^(1/4)) (SIGN_FRAC = 3).
3. e^(−u) = E_K, E_0 = Σ_{k ≤ 8} (−t)^k/k! with t = u/2^K (K = 7: −2^−10 ≤ t < 4), E_{j+1} = E_j²
   (t and t² = η²/2^2K in one round from η, then t³ and t⁴, then t⁴·(c₅t + c₆t²) plus the rest,
   one rounding).
   Error: the Taylor remainder is ≤ t^9/9! relative (2·10^−14 for u ≤ 16, 6·10^−13 for
   u ≤ 23) and each squaring doubles a relative error, so e^(−u) has relative error
   ≤ 2^K·(t^9/9! + 2^−F·3) ≈ 4·10^−10 for u ≤ 23; for larger u both e^(−u) and the
   computed value are below 10^−10 (the polynomial stays in (0.08, 1] for t ∈ [0, 4] and
   below e^−0.18 for t ≥ 0.18).
4. σ(u) = 1/(1 + v) by Newton x ← x(2 − Dx) from the linear minimax start on
   D ∈ [1, 1 + e^(1/4)] (relative error 0.083, squared each step: 2.2·10^−9 after 3 steps), in
   the coupled form x ← x(1 + ε), ε ← ε² (one round a step, after one for x₀ and ε₀).
5. σ(η) = b + (1 − 2b)·σ(u), and σ(η)(1 − σ(η)) = σ(u)(1 − σ(u)).

Absolute error of σ(η): below ≈ 2.3·10^−9 (fixed-point rounding of 2^−40 per product
included); the GLM gradient averages it over the rows.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import ETA_BITS, EXP_DEGREE, EXP_SQUARINGS, RECIPROCAL_STEPS, SIGN_FRAC
from services.lasso.mpc.secure_compare import comparison_bits, less_than_zero, trunc_convert
from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]

#: |e^(−u)|, every Taylor power and the unrounded polynomial stay below 2^(LINK_BITS − 1) (t ≤ 4: t⁴ ≤ 256,
#: |t⁴·(c₅t + … + c₈t⁴)| < 4,900).
LINK_BITS = 14


def compare_bits(resolution: int = SIGN_FRAC) -> int:
    """ℓ of the sign comparison of η rounded to 2^−resolution (|η| < 2^(ETA_BITS−1), one bit of margin)."""
    return ETA_BITS + resolution + 1


def reciprocal_start(low: float, high: float) -> tuple[float, float]:
    """(c₁, c₂) of the minimax linear start x₀ = c₁ − c₂·D for 1/D on [low, high].

    The error 1 − D·x₀ equioscillates at low, high and the vertex: c₂ = 8/((low + high)² + 4·low·high),
    c₁ = c₂·(low + high); its size is 1 − c₂·low·high.
    """
    c2 = 8 / ((low + high) ** 2 + 4 * low * high)
    return c2 * (low + high), c2


def start_sign_random(small: FieldOps, n: int, resolution: int = SIGN_FRAC) -> Any:
    """The random bits of ``sign_bits`` for n values, started now (``FieldOps.pair_bits``: two rounds, no
    opening and no square roots). Started at least one round before ``sign_bits``, they add no round."""
    return small.pair_bits(comparison_bits(n, compare_bits(resolution)))


async def sign_bits(
    big: FieldOps,
    small: FieldOps,
    eta: ObjectArray,
    frac: int,
    *,
    degree2t: bool = False,
    resolution: int = SIGN_FRAC,
    random: Any = None,
) -> tuple[ObjectArray, ObjectArray]:
    """(η truncated to ``frac`` in ``big``, b = [η < 0] in ``big``) from η·2^frac (or a degree-2t η·2^(2·frac)).

    η (|η| < 2^(ETA_BITS−1)) is rounded to 2^−resolution and moved to the small field (one
    truncating conversion, in the same round as the truncation of a degree-2t η and as the
    comparison's random bits), compared there (``compare_bits(resolution)`` bits), and the bit
    is moved back; a wrong bit only for |η| < 2^(1−resolution) (the truncation's −1 … +2 units).
    ``random``: the bits from ``start_sign_random`` (started a round earlier); by default
    ``FieldOps.random_bits`` (one round, shared with the conversion, but a square root per bit).
    """
    shift = 2 * frac if degree2t else frac
    l = compare_bits(resolution)  # noqa: E741  (ℓ, as in secure_compare)
    moved = trunc_convert(big, small, eta, shift - resolution, ETA_BITS + shift + 1, degree2t=degree2t)
    if random is None:
        random = small.random_bits(comparison_bits(eta.size, l))
    if degree2t:
        eta, coarse, bits = await asyncio.gather(
            big.trunc(eta, frac, ETA_BITS + shift + 1, degree2t=True), moved, random
        )
    else:
        coarse, bits = await asyncio.gather(moved, random)
    below = await less_than_zero(small, coarse, l, bits)
    return eta, await small.convert(below, big, 2)


async def exp_neg(ops: FieldOps, t: ObjectArray, frac: int, square: ObjectArray | None = None) -> ObjectArray:
    """e^(−t·2^K) (frac ``frac``) for t = u/2^K ∈ [−2^−9, 4) (frac ``frac``): Taylor, then K squarings.

    The Taylor polynomial (degree 4 … 8) in three rounds: t², then t³ and t⁴, then one product
    t⁴·(c₅t + … ) added to c₀ + … + c₄t⁴ and truncated by 2·frac together (one rounding).
    ``square``: t² (frac ``frac``) if the caller made it alongside t (``sigmoid``), saving the first.
    """
    one, p, n = 1 << frac, ops.p, t.size
    bits = 2 * frac + LINK_BITS + 2
    if square is None:
        square = await ops.mul(t, t, frac, bits)
    third_fourth = await ops.mul(np.concatenate([t, square]), np.concatenate([square, square]), frac, bits)
    powers = [one, t, square, third_fourth[:n], third_fourth[n:]]
    coefficients = [round(one * (-1) ** k / math.factorial(k)) for k in range(EXP_DEGREE + 1)]
    low = sum(coefficients[k] * powers[k] for k in range(min(EXP_DEGREE, 4) + 1))  # frac 2·frac
    high = sum((coefficients[k] * powers[k - 4] for k in range(5, EXP_DEGREE + 1)), np.zeros(t.shape, dtype=object))
    total = (low * one + powers[4] * high) % p  # frac 3·frac, degree 2t
    value = await ops.trunc(total, 2 * frac, 3 * frac + LINK_BITS + 2, degree2t=True)
    for _ in range(EXP_SQUARINGS):
        value = await ops.mul(value, value, frac, bits)
    return value


async def reciprocal_one_plus(ops: FieldOps, v: ObjectArray, frac: int, high: float) -> ObjectArray:
    """1/(1 + v) (frac ``frac``) for v ∈ [0, high − 1]: Newton from the minimax linear start, in the
    coupled form x ← x(1 + ε), ε ← ε² (ε = 1 − Dx; exact: 1 − Dx(1 + ε) = ε²), both products in one round.

    The first round rounds x₀ = c₁ − c₂D and makes ε₀ = 1 − c₁D + c₂D² from the unrounded D² (one
    truncation of both, from frac 3·frac). Rounding: with ε̃ the computed ε, δ = ε̃ − ε grows by
    (1 + ε) a step plus new roundings of 2^−frac·(1 + D), so after the steps 1 − Dx is ε₀^(2^k) plus
    ~10^−11 (frac 40). Rounds: 1 + RECIPROCAL_STEPS (was 2 a step).
    """
    one, p = 1 << frac, ops.p
    c1, c2 = (round(c * one) for c in reciprocal_start(1.0, high))
    d = (v + one) % p
    start = np.concatenate([(c1 * one - c2 * d) * one, one * one * one - c1 * d * one + c2 * d * d]) % p  # frac 3F
    both = await ops.trunc(start, 2 * frac, 3 * frac + 4, degree2t=True)
    n = d.size
    x, eps = both[:n], both[n:]
    for step in range(RECIPROCAL_STEPS):
        if step == RECIPROCAL_STEPS - 1:
            return await ops.mul(x, (one + eps) % p, frac, 2 * frac + 4)
        both = await ops.mul(np.concatenate([x, eps]), np.concatenate([(one + eps) % p, eps]), frac, 2 * frac + 4)
        x, eps = both[:n], both[n:]
    return x


async def sigmoid(
    big: FieldOps,
    small: FieldOps,
    eta2: ObjectArray,
    frac: int,
    weight_frac: int | None = None,
    random: Any = None,
) -> tuple[ObjectArray, ObjectArray, ObjectArray]:
    """(σ(η) at ``frac``, σ(η)(1 − σ(η)) at ``weight_frac`` (default ``frac``), [η < 0]) for a
    degree-2t η·2^(2·frac) (the local product X̃·v); ``random`` as ``sign_bits``'s."""
    p = big.p
    eta, below = await sign_bits(big, small, eta2, frac, degree2t=True, random=random)
    flip = (1 - 2 * below) % p  # ±1: u = flip·η > −2^(1−SIGN_FRAC)
    # t = u/2^K and t² = η²/2^2K (flip² = 1) in one round, both truncated by frac + 2K.
    k = EXP_SQUARINGS
    both = await big.mul(
        np.concatenate([flip << (frac + k), eta]), np.concatenate([eta, eta]), frac + 2 * k, 2 * frac + 2 * ETA_BITS + 2
    )
    n = eta.size
    v = await exp_neg(big, both[:n], frac, square=both[n:])
    sig_u = await reciprocal_one_plus(big, v, frac, 1 + math.exp(2.0 ** (1 - SIGN_FRAC)))
    one = 1 << frac
    cut = 2 * frac - (
        frac if weight_frac is None else weight_frac
    )  # σ(1−σ) at weight_frac; flip·σ scaled to stay at frac
    both = await big.mul(
        np.concatenate([flip * (one << (cut - frac)), sig_u]),
        np.concatenate([sig_u, (one - sig_u) % p]),
        cut,
        frac + cut + 3,
    )
    prob = (below * one + both[:n]) % p
    return prob, both[n:], below


async def reciprocal_unit(ops: FieldOps, a: ObjectArray, n: int, frac: int) -> ObjectArray:
    """1/a (frac ``frac``) for a ∈ [1/n, 1]: Newton x ← x(2 − ax) from x₀ = 1.

    The error 1 − ax squares every step from 1 − a ≤ 1 − 1/n: ⌈log₂(28·n)⌉ + 2 steps bring it below 2^−40.
    """
    one = 1 << frac
    steps = math.ceil(math.log2(28 * n)) + 2
    bits = 2 * frac + math.ceil(math.log2(n + 1)) + 4
    x = np.full(a.shape, one, dtype=object)
    for _ in range(steps):
        ax = await ops.mul(a, x, frac, bits)
        x = await ops.mul(x, (2 * one - ax) % ops.p, frac, bits)
    return x
