"""Batched secure comparison [a < 0] of many short values, and moves between fields.

The GLMs need the sign of η for every row (``secure_functions``), but only at a coarse
resolution (a wrong sign for |η| < 2^−1 does no harm). So η is truncated and moved to a
small prime field in one round (``trunc_convert``), compared there with ℓ ≈ 12 bits, and
the bit is moved back (``FieldOps.convert``). MPyC's ``np_sgn`` does the same maths but
took ~1 ms per element here (10,000 rows: 8.6 s); this version is vectorised over numpy
object arrays and uses the repository's PRSS and resharing (``secure_ops``).

Comparison (Toft's variant of the bitwise comparison with a random sign, after Reistad &
Toft 2009, as MPyC's ``np_sgn(LT=True)`` and ``secure_threshold``): with random bits
r_0..r_{ℓ−1} (MSB first), r = Σ r_i 2^(ℓ−1−i), a random sign s = ±1 and a PRSS mask R,
open c = a + 2^ℓ + r + 2^ℓ·R; with c_i the bits of c mod 2^ℓ,

    e_i = s − (c_i − r_i) + 3·Σ_{j<i} (c_j ⊕ r_j)   (i < ℓ),   e_ℓ = s − 1 + 3·Σ_{j<ℓ}(c_j ⊕ r_j),
    g = [Π e_i = 0] (opened, after multiplying by a random ρ: g alone is uniform, s masks it),
    [a < 0] = ((c mod 2^ℓ) − (a + 2^ℓ + r) + ((1 − 2g)s + 3)·2^(ℓ−1)) / 2^ℓ.

Since c − 2^ℓ·R = a + 2^ℓ + r, the last line needs only degree-t shares (R, s), so a may be an
unreduced local product (degree 2t: c is then opened with threshold 2t).

Rounds: random bits (1, or shared with an earlier round: ``random``), open c (1), ⌈log₂(ℓ + 2)⌉ − 1
degree reductions of the product tree, open the root (1). Requirements: |a| < 2^(ℓ−1), a field of
≥ ℓ + κ + 6 bits, p ≡ 3 (mod 4).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]


def compare_field_bits(kappa: int, bits: int) -> int:
    """Prime size (bits) ``less_than_zero`` needs for ``bits``-bit values."""
    return bits + kappa + 6


async def trunc_convert(
    src: FieldOps, dst: FieldOps, x: ObjectArray, frac: int, bits: int, *, degree2t: bool = False
) -> ObjectArray:
    """Degree-t sharings in ``dst`` of ≈ x/2^frac, for signed |x| < 2^(bits−1) shared in ``src``
    (degree t, or 2t with ``degree2t``: a PRSS zero-sharing of degree 2t re-randomises it).

    One round: open c = x + 2^(bits−1) + r_lo + 2^frac·r_hi in ``src`` (r_lo of ``frac``
    bits, r_hi of κ + bits − frac bits, the same PRSS integers in both fields), then
    ⌊c/2^frac⌋ − r_hi − 2^(bits−1−frac) − bias in ``dst`` is ⌊(x + r_lo)/2^frac⌋ − bias:
    the truncation of ``secure_ops.trunc``, error within [−1, M − 1) units after the bias.
    """
    src._check_bits(bits)
    n = x.size
    uci = src.mpc._prss_uci()
    hi_bits = src.kappa + bits - frac
    r_lo = src._prss(n, 1 << frac).reshape(x.shape)
    r_hi_src = src._prss(n, 1 << hi_bits, uci).reshape(x.shape)
    r_hi_dst = dst._prss(n, 1 << hi_bits, uci).reshape(x.shape)
    masked = x + (1 << (bits - 1)) + r_lo + (r_hi_src << frac)
    if degree2t:
        masked = masked + src._prss_zero(n).reshape(x.shape)
    c = await src._open(masked % src.p, 2 * src.t if degree2t else src.t)
    assert c is not None
    bias = (src.subsets - 1) // 2 + (1 << (bits - 1 - frac))
    out: ObjectArray = ((c >> frac) - r_hi_dst - bias) % dst.p
    return out


def _leaf_factors(c_low: ObjectArray, r_bits: ObjectArray, s: ObjectArray, l: int, p: int) -> ObjectArray:  # noqa: E741
    """e_i = s − (c_i − r_i) + 3·Σ_{j<i}(c_j ⊕ r_j) (i < ℓ) and e_ℓ = s − 1 + 3·Σ_j(c_j ⊕ r_j), mod p.

    Local and linear in the shares; in int64 when p < 2^61 (every intermediate stays below
    2^63), else in Python ints.
    """
    n = c_low.size
    if p >= 1 << 61:
        c_bits = ((c_low[:, None] >> np.arange(l - 1, -1, -1).astype(object)) & 1).astype(object)
        xor = c_bits + r_bits - 2 * c_bits * r_bits
        prefix = np.concatenate([np.zeros((n, 1), dtype=object), np.cumsum(xor, axis=1)], axis=1)
        diff = np.concatenate([c_bits - r_bits, np.ones((n, 1), dtype=object)], axis=1)
        factors: ObjectArray = (s[:, None] - diff + 3 * prefix) % p
        return factors
    c_bits = (np.asarray(c_low, dtype=np.int64)[:, None] >> np.arange(l - 1, -1, -1)) & 1
    r = np.asarray(r_bits, dtype=np.int64)
    xor = np.where(c_bits == 1, (1 - r) % p, r)
    prefix = np.zeros((n, l + 1), dtype=np.int64)
    for i in range(l):
        prefix[:, i + 1] = (prefix[:, i] + xor[:, i]) % p
    diff = np.concatenate([c_bits - r, np.ones((n, 1), dtype=np.int64)], axis=1)
    out = (np.asarray(s, dtype=np.int64)[:, None] - diff) % p
    result: ObjectArray = ((out + 3 * prefix) % p).astype(object)
    return result


def comparison_bits(n: int, bits: int) -> int:
    """How many random bits ``less_than_zero`` uses for n ``bits``-bit values (ℓ + 1 per value)."""
    return n * (bits + 1)


async def less_than_zero(
    ops: FieldOps, a: ObjectArray, bits: int, random: ObjectArray | None = None, *, degree2t: bool = False
) -> ObjectArray:
    """Degree-t 0/1 sharings of [a < 0] for signed |a| < 2^(bits−1) (degree t, or 2t with ``degree2t``:
    an unreduced local product, opened in c with a PRSS zero sharing; a itself is not used again, so
    no degree reduction is needed), elementwise.

    ``random``: the ``comparison_bits`` random bits, if made beforehand (in an earlier round that
    had to happen anyway); by default they are made here, in a round of their own.
    """
    if ops.bits < compare_field_bits(ops.kappa, bits):
        raise OverflowError(f"a {ops.bits}-bit field is too small to compare {bits}-bit values")
    p, l = ops.p, bits  # noqa: E741  (ℓ, as in the docstring)
    shape = a.shape
    flat = a.reshape(-1) % p
    n = flat.size
    if random is None:
        random = await ops.random_bits(comparison_bits(n, l))
    random = random.reshape(n, l + 1)
    r_bits, s = random[:, :l], (2 * random[:, l] - 1) % p
    weights = np.array([1 << (l - 1 - i) for i in range(l)], dtype=object)
    r = (r_bits * weights).sum(axis=1)
    mask = ops._prss(n, 1 << (ops.kappa + 2))  # 2^ℓ·mask hides a + 2^ℓ + r < 2^(ℓ+2)
    masked = flat + (1 << l) + r + (mask << l)
    if degree2t:
        masked = masked + ops._prss_zero(n)
    c = await ops._open(masked % p, 2 * ops.t if degree2t else ops.t)
    assert c is not None
    c_low = c % (1 << l)
    factors = _leaf_factors(c_low, r_bits, s, l, p)  # (n, l + 1)
    factors = np.concatenate([factors, ops._prss(n, p)[:, None]], axis=1)  # the random ρ
    while factors.shape[1] > 2:
        half = factors.shape[1] // 2
        products = factors[:, :half] * factors[:, half : 2 * half]
        reduced = (await ops.reduce(products.reshape(-1) % p)).reshape(n, half)
        factors = np.concatenate([reduced, factors[:, 2 * half :]], axis=1)
    root = (factors[:, 0] * factors[:, 1] + ops._prss_zero(n)) % p
    opened = await ops._open(root, 2 * ops.t)
    assert opened is not None
    g = (opened == 0).astype(np.int64).astype(object)
    high = ((1 - 2 * g) * s + 3) % p
    # a + 2^ℓ + r = c − 2^ℓ·mask: the bit from degree-t shares only, whatever a's degree.
    bit = (c_low - c + (mask << l) + high * (1 << (l - 1))) * pow(1 << l, -1, p) % p
    below: ObjectArray = bit.reshape(shape)
    return below


async def all_zero(ops: FieldOps, counts: ObjectArray) -> bool:
    """Whether Σ counts = 0 for degree-t shares of non-negative counts (sum < p), opening one bit.

    Opens ρ·Σ counts for a PRSS-random ρ (degree 2t, re-randomised by a PRSS zero sharing): zero
    exactly when the sum is, otherwise uniform (as the lasso's certificate checks).
    """
    total = np.array([counts.sum() % ops.p], dtype=object)
    product = (total * ops._prss(1, ops.p) + ops._prss_zero(1)) % ops.p
    opened = await ops._open(product, 2 * ops.t)
    assert opened is not None
    return int(opened[0]) == 0
