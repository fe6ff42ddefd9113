"""Exact big-integer Gram matrices from float64 products on 16-bit limbs."""

from __future__ import annotations

import random

import numpy as np

from services.lasso.core.limbs import (
    bytes_to_limbs,
    column_sums_limbs,
    combine_gram,
    combine_sums,
    gram_limbs,
    ints_to_bytes,
    limb_count,
    normalise,
)


def test_gram_of_160_bit_integers_is_exact() -> None:
    rng = random.Random(4)
    rows, cols, bits = 300, 5, 162
    values = [[rng.getrandbits(bits) for _ in range(cols)] for _ in range(rows)]
    k = limb_count(bits)
    limbs = bytes_to_limbs(ints_to_bytes([v for row in values for v in row], k), k).reshape(rows, cols, k)
    gram = combine_gram(gram_limbs(limbs))
    sums = combine_sums(column_sums_limbs(limbs))
    for i in range(cols):
        assert sums[i] == sum(row[i] for row in values)
        for j in range(cols):
            assert gram[i, j] == sum(row[i] * row[j] for row in values)


def test_normalise_carries_a_sum_of_shares() -> None:
    rng = random.Random(5)
    k = limb_count(66)
    parts = [[rng.getrandbits(64) for _ in range(7)] for _ in range(3)]
    total = np.sum([bytes_to_limbs(ints_to_bytes(p, k), k) for p in parts], axis=0)
    normal = normalise(total.copy())
    assert int(normal.max()) < 2**16
    for n in range(7):
        assert sum(int(normal[n, a]) << (16 * a) for a in range(k)) == sum(p[n] for p in parts)
