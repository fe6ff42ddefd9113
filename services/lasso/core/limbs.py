"""Exact big-integer Gram matrices with float64 BLAS on 16-bit limbs.

A party's Shamir shares of the joined table are integers below 3p (p ≈ 2^160),
and the secure Gram needs the exact local product Σ_r z_r z_rᵀ of those
integers (MPyC would do it on numpy object arrays of Python ints — one big
integer multiplication per term). Instead, write every integer in base 2^16,

    z = Σ_a 2^(16a) L_a,   0 ≤ L_a < 2^16,

then Σ_r z_ri z_rj = Σ_{a,b} 2^(16(a+b)) · (Σ_r L_ria L_rjb). The inner sums
are one float64 matrix product LᵀL (numpy calls BLAS ``syrk`` for ``L.T @ L``);
each term is < 2^32, so a block of at most 2^21 rows sums exactly below 2^53.
Blocks are accumulated in int64 (exact below 2^63, i.e. for < 2^31 rows) and
recombined into Python ints once per fold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

LIMB_BITS = 16
#: Rows per float64 product that keep every partial sum exact (2^21 · 2^32 = 2^53).
MAX_BLOCK_ROWS = 1 << 21

IntMatrix = npt.NDArray[np.int64]
ObjectArray = npt.NDArray[np.object_]


def limb_count(bound_bits: int) -> int:
    """Limbs needed for non-negative integers below 2^bound_bits."""
    return -(-bound_bits // LIMB_BITS)


def ints_to_limbs(values: ObjectArray, limbs: int) -> npt.NDArray[np.uint16]:
    """(n, limbs) uint16 limbs (little-endian) of non-negative ints < 2^(16·limbs).

    Vectorised: 64-bit words by object shifts and masks, then a uint16 view.
    ``.tobytes()`` of the result is the wire encoding read by ``bytes_to_limbs``.
    """
    flat = np.asarray(values, dtype=object).reshape(-1)
    words = -(-limbs // 4)
    out = np.empty((flat.size, words), dtype="<u8")
    rest = flat
    for w in range(words):
        out[:, w] = (rest & 0xFFFFFFFFFFFFFFFF).astype(np.uint64)
        rest = rest >> 64
    if flat.size and np.any(rest != 0):
        raise OverflowError("value does not fit the limb width")
    return out.view("<u2")[:, :limbs]


def ints_to_bytes(values: Sequence[int] | ObjectArray, limbs: int) -> bytes:
    """Little-endian fixed-width encoding (2·limbs bytes per value) of non-negative ints."""
    return np.ascontiguousarray(ints_to_limbs(np.asarray(values, dtype=object), limbs)).tobytes()


def bytes_to_limbs(data: bytes, limbs: int) -> IntMatrix:
    """The (n, limbs) int64 limb matrix of values written by ``ints_to_bytes``."""
    return np.frombuffer(data, dtype="<u2").reshape(-1, limbs).astype(np.int64)


def normalise(limbs: IntMatrix) -> IntMatrix:
    """Propagate carries so every limb is < 2^16 (in place; the value must fit the width)."""
    mask = (1 << LIMB_BITS) - 1
    for a in range(limbs.shape[-1] - 1):
        carry = limbs[..., a] >> LIMB_BITS
        limbs[..., a] &= mask
        limbs[..., a + 1] += carry
    if np.any(limbs[..., -1] >> LIMB_BITS):
        raise OverflowError("value does not fit the limb width")
    return limbs


def gram_limbs(limbs: IntMatrix) -> IntMatrix:
    """Exact Σ_r L_ria L_rjb as int64 of shape (c, k, c, k), for limbs of shape (rows, c, k).

    Requires rows ≤ MAX_BLOCK_ROWS and limbs < 2^16.
    """
    rows, c, k = limbs.shape
    if rows > MAX_BLOCK_ROWS:
        raise ValueError("block too large for an exact float64 product")
    flat = limbs.reshape(rows, c * k).astype(np.float64)
    product = flat.T @ flat
    gram: IntMatrix = np.rint(product).astype(np.int64).reshape(c, k, c, k)
    return gram


def column_sums_limbs(limbs: IntMatrix) -> IntMatrix:
    """Σ_r L_ria as int64 of shape (c, k)."""
    sums: IntMatrix = limbs.sum(axis=0)
    return sums


def combine_gram(acc: IntMatrix) -> ObjectArray:
    """Σ_{a,b} 2^(16(a+b)) acc[i,a,j,b] as a (c, c) object array of Python ints.

    Partial sums over a + b = s stay in int64 (each term < 2^63 / k).
    """
    c, k = acc.shape[0], acc.shape[1]
    diagonals = np.zeros((2 * k - 1, c, c), dtype=np.int64)
    for a in range(k):
        for b in range(k):
            diagonals[a + b] += acc[:, a, :, b]
    out = np.zeros((c, c), dtype=object)
    for s in range(2 * k - 2, -1, -1):
        out = (out << LIMB_BITS) + diagonals[s].astype(object)
    return out


def combine_sums(acc: IntMatrix) -> ObjectArray:
    """Σ_a 2^(16a) acc[i,a] as a (c,) object array of Python ints."""
    out = np.zeros(acc.shape[0], dtype=object)
    for a in range(acc.shape[1] - 1, -1, -1):
        out = (out << LIMB_BITS) + acc[:, a].astype(object)
    return out
