"""One ADMM step's communication: truncation fused with a batched soft-threshold.

Given x = v·2^(2f) as a degree-2t sharing (the local result of the step's
matrix-vector product) and thresholds κ ≥ 0 (degree t), ``FusedThreshold``
returns degree-t sharings of v (frac f), z = S_κ(v) = v − clip(v, −κ, κ) and the
bits [v > κ], [v < −κ], in 1 + ⌈log₂(ℓ+2)⌉ rounds (7 for ℓ = 44), where MPyC's
truncation, ``np_sgn`` and a multiplication take 1 + 9 + 1.

Comparison. For each of a⁺ = κ − v and a⁻ = v + κ (|a| < 2^(ℓ−1)), the bit
[a < 0] is computed as in MPyC's ``np_sgn(LT=True)`` (Toft's variant of the
bitwise comparison with a random sign, after Reistad & Toft 2009): with random
bits r_0..r_{ℓ−1} (MSB first), r = Σ r_i 2^(ℓ−1−i), a random sign s = ±1 and
a PRSS mask R, open c = a + 2^ℓ + r + 2^ℓ·R; with c_i the bits of c mod 2^ℓ,

    e_i = s − (c_i − r_i) + 3·Σ_{j<i} (c_j ⊕ r_j)   (i < ℓ),   e_ℓ = s − 1 + 3·Σ_{j<ℓ}(c_j ⊕ r_j),
    g = [Π e_i = 0] (public),   [a < 0] = ((c mod 2^ℓ) − (a + 2^ℓ + r) + ((1 − 2g)s + 3)·2^(ℓ−1)) / 2^ℓ.

Fusions (each saves a round):
* The random bits of all steps are made up front (``FieldOps.random_bits``,
  MPyC's square-root method, one round per batch).
* Truncation: v = P − r_hi with P public after opening x + r_lo + 2^f·r_hi
  (see ``secure_ops``). Since a⁺ = (κ + r_hi) + (stuff public once P is
  known), c is opened in the *same* round as the truncation as
  c_sec = κ ± r_hi + H + 2^ℓ + r + 2^ℓ·R (H a public positivity offset) and
  completed locally; R is 2^κ times wider than κ + r_hi, so c_sec hides them.
* The zero test of Π e_i takes a random factor ρ as one more leaf of the
  product tree and the root is opened (threshold 2t) instead of reduced.
* z needs b·m with m = ∓a: b·m = 2^−ℓ[(c mod 2^ℓ − 2^(ℓ−1))·m − a·m − r·m +
  (1 − 2g)2^(ℓ−1)·s·m], so a², r·m and s·m are reduced alongside the first
  level of the tree and z follows locally once g is public.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]

#: Largest batch of random bits made in one round (memory bound).
MAX_BITS_PER_BATCH = 1 << 17


def threshold_field_bits(kappa: int, frac: int, x_bits: int) -> int:
    """Prime size needed by ``FusedThreshold`` (the wider of the two openings, plus margin)."""
    trunc = kappa + x_bits + 3
    compare = 2 * kappa + (x_bits - frac) + 6
    return max(trunc, compare)


def threshold_bits_needed(size: int, frac: int, x_bits: int) -> int:
    """Random bits one ``FusedThreshold.step`` on ``size`` values uses (2 comparisons × (ℓ + 1))."""
    return 2 * size * (x_bits - frac + 1)


class FusedThreshold:
    """Soft-threshold steps for a fixed batch shape and thresholds κ (see module docstring).

    ``x_bits`` bounds x = v·2^(2f) (|x| < 2^(x_bits−1)); comparisons use
    ℓ = x_bits − f bits, so |κ| + |v| must stay below 2^(ℓ−1−f) in value.
    """

    def __init__(self, ops: FieldOps, kappa: ObjectArray, frac: int, x_bits: int, steps: int) -> None:
        needed = threshold_field_bits(ops.kappa, frac, x_bits)
        if ops.bits < needed:
            raise OverflowError(f"field of {ops.bits} bits is too small for the fused threshold ({needed})")
        self.ops = ops
        self.kappa = kappa % ops.p
        self.frac = frac
        self.x_bits = x_bits
        self.l = x_bits - frac  # comparison bits
        self.n = kappa.size
        self._steps_left = steps
        self._bits: ObjectArray = np.zeros((0, self.l + 1), dtype=object)

    async def _random_bits(self) -> ObjectArray:
        """2n × (ℓ+1) random bits (degree t) for one step; made for many steps per round."""
        per_step = 2 * self.n
        if self._bits.shape[0] < per_step:
            steps = max(1, min(self._steps_left, MAX_BITS_PER_BATCH // (per_step * (self.l + 1))))
            fresh = await self.ops.random_bits(steps * per_step * (self.l + 1))
            self._bits = fresh.reshape(-1, self.l + 1)
        self._steps_left -= 1
        out, self._bits = self._bits[:per_step], self._bits[per_step:]
        return out

    async def step(
        self, x: ObjectArray, random_bits: ObjectArray | None = None
    ) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
        """(v, z, |z|, above, below) for x = v·2^(2f) (degree 2t), all of x's shape.

        ``random_bits`` (``threshold_bits_needed`` of them, e.g. a slice of one batch made
        for several thresholds) saves the round that would make them here.
        """
        ops, p, f, cmp_bits, n = self.ops, self.ops.p, self.frac, self.l, self.n  # cmp_bits: ℓ (l) in the maths
        shape = x.shape
        m = 2 * n  # comparisons: a⁺ = κ − v and a⁻ = v + κ
        if random_bits is None:
            bits = await self._random_bits()  # (m, l+1): l magnitude bits (MSB first) and a sign bit
        else:
            bits = random_bits.reshape(m, cmp_bits + 1)
        r_bits, sign_bits = bits[:, :cmp_bits], bits[:, cmp_bits]
        r = (r_bits * (np.ones(cmp_bits, dtype=object) << np.arange(cmp_bits - 1, -1, -1).astype(object))).sum(axis=1)
        s = (2 * sign_bits - 1) % p

        # Round 1: open the truncation mask and both comparisons' masked values.
        lo_bound, hi_bits = f, ops.kappa + self.x_bits - f
        r_lo = ops._prss(n, 1 << lo_bound)
        r_hi = ops._prss(n, 1 << hi_bits)
        offset_h = ops.subsets << hi_bits  # ≥ r_hi, keeps κ − r_hi + H positive
        r_div = ops._prss(m, 1 << (ops.kappa + hi_bits + 3 - cmp_bits))  # R·2^l ≥ 2^κ·(κ ± r_hi + H)
        flat_x = x.reshape(-1)
        kappa = self.kappa.reshape(-1)
        masked_x = flat_x + (1 << (self.x_bits - 1)) + r_lo + (r_hi << f)
        secret = np.concatenate([kappa + r_hi, kappa - r_hi])
        masked_c = secret + offset_h + (1 << cmp_bits) + r + (r_div << cmp_bits)
        opened = await ops._open((np.concatenate([masked_x, masked_c]) + ops._prss_zero(n + m)) % p, 2 * ops.t)
        assert opened is not None
        c_t, c_sec = opened[:n], opened[n:]
        big_p = (c_t >> f) - (1 << (self.x_bits - 1 - f)) - (ops.subsets - 1) // 2
        v = (big_p - r_hi) % p  # degree t, frac f
        bias = (ops.subsets - 1) // 2 + (1 << (self.x_bits - 1 - f))
        public = np.concatenate([bias - (c_t >> f), (c_t >> f) - bias])  # a = secret + public
        c_full = c_sec + public - offset_h
        c_mod = c_full % (1 << cmp_bits)
        a = (np.concatenate([kappa - v, v + kappa])) % p
        mult = np.concatenate([(-a[:n]) % p, a[n:]])  # m = v − κ = −a⁺,  m = v + κ = a⁻

        # e_i from the public bits of c mod 2^l.
        c_bits = ((c_mod[:, None] >> np.arange(cmp_bits - 1, -1, -1).astype(object)) & 1).astype(object)
        xor = c_bits + r_bits - 2 * c_bits * r_bits
        prefix = np.concatenate([np.zeros((m, 1), dtype=object), np.cumsum(xor, axis=1)], axis=1)
        ones = np.ones((m, 1), dtype=object)
        e = (s[:, None] - np.concatenate([c_bits - r_bits, ones], axis=1) + 3 * prefix) % p  # (m, l+1)
        rho = ops._prss(m, p)
        factors = np.concatenate([e, rho[:, None]], axis=1)  # (m, l+2)

        # Rounds 2..: the product tree; a², r·m and s·m ride along the first level.
        side = np.concatenate([a * a, r * mult, s * mult])
        first = True
        while factors.shape[1] > 2:
            k = factors.shape[1]
            half = k // 2
            prods = factors[:, :half] * factors[:, half : 2 * half]
            carry = factors[:, 2 * half :]
            payload = prods.reshape(-1)
            if first:
                payload = np.concatenate([payload, side])
            reduced = await ops.reduce(payload % p)
            if first:
                side_reduced = reduced[m * half :]
                reduced = reduced[: m * half]
                first = False
            factors = np.concatenate([reduced.reshape(m, half), carry], axis=1)
        root = (factors[:, 0] * factors[:, 1]) % p
        opened_root = await ops._open((root + ops._prss_zero(m)) % p, 2 * ops.t)
        assert opened_root is not None
        g = (opened_root == 0).astype(np.int64).astype(object)

        # Bits and b·m locally (all exact: the numerators are multiples of 2^l).
        inv = pow(1 << cmp_bits, -1, p)
        hh = ((1 - 2 * g) * s + 3) % p
        a_r = (a + (1 << cmp_bits) + r) % p
        bit = ((c_mod - a_r + hh * (1 << (cmp_bits - 1))) * inv) % p
        a_sq, r_m, s_m = (side_reduced[i * m : (i + 1) * m] for i in range(3))
        a_m = np.concatenate([(-a_sq[:n]) % p, a_sq[n:]])
        bm = (
            (
                (c_mod - (1 << cmp_bits) + 3 * (1 << (cmp_bits - 1))) * mult
                - a_m
                - r_m
                + (1 - 2 * g) * (1 << (cmp_bits - 1)) * s_m
            )
            * inv
        ) % p
        above, below = bit[:n].reshape(shape), bit[n:].reshape(shape)
        z = ((bm[:n] + bm[n:]) % p).reshape(shape)
        z_abs = ((bm[:n] - bm[n:]) % p).reshape(shape)
        return v.reshape(shape), z, z_abs, above, below
