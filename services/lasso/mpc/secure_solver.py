"""B regressions at once on normalised moments: Jacobi scaling, ADMM, polishing (MPyC).

Input: shares of Ĉ ((B, d+1, d+1), target last, ``secure_gram``) and the
per-problem constants ``Params`` (public per alpha, or one-hot combinations
of them when cross-validation chose the alpha secretly). Steps (see ``plan``
for the maths):

1. Newton for e = 1/√G_jj from a public start (two rounds per step), then
   H = diag(e)·G·diag(e) (unit diagonal), q′ = e∘Ĉ_xy and λ (clamped so that
   κ = λ/ρ ≤ ``KAPPA_CLAMP``), in F_in at 40 fractional bits.
2. ADMM in the 128-bit field F_w at 32 fractional bits: K = (H + ρI)⁻¹ by
   Newton–Schulz, then per iteration one local matrix-vector product and one
   ``FusedThreshold`` step (7 rounds: truncation and both comparisons of every
   coordinate of every problem in one batch).
3. Polishing in F_in: Newton–Schulz on the support found by ADMM, and a secure
   comparison of the objective keeps the better point.

Bounds (assumed, documented in services/lasso/REGRESSION.md): in the
normalised coordinates |ADMM values| < 2^(ADMM_BITS−1) = 256, |ŵ| < 2^10,
σ_j/h_j ≳ 2^−11 (Newton converges within ``NEWTON_ITERATIONS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from services.lasso.core.plan import ADMM_RELAX, ADMM_RHO, NEWTON_ITERATIONS, SolverPlan
from services.lasso.mpc.secure_gram import FRAC_IN
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_threshold import FusedThreshold

ObjectArray = npt.NDArray[np.object_]
StepCallback = Callable[[int], None]

FRAC_W = 32
FRAC_POLISH = 32
#: |ADMM values| < 2^(ADMM_BITS − 1) = 256 in the normalised units; with this bound F_w is a
#: 128-bit prime (two 64-bit limbs: its modular square roots, the bulk of a comparison, are
#: ~30% cheaper than at 130 bits).
ADMM_BITS = 9
#: Bits of x = v·2^64 in an ADMM step (|v| < 2^ADMM_BITS); comparisons use ADMM_X_BITS − 32 = 42.
ADMM_X_BITS = 2 * FRAC_W + ADMM_BITS + 1
#: Soft-threshold levels κ = λ/ρ are clamped to this (a coefficient with a larger κ is 0 unless
#: a gradient entry exceeds ρ·KAPPA_CLAMP = 16 in the normalised units).
KAPPA_CLAMP = 2.0**6
#: |ŵ_j| < 2^(W_HAT_BITS − 1): normalised coefficients (effect of x_j's half-range in y half-ranges).
W_HAT_BITS = 11
#: |e_j| < 2^(E_BITS − 1): Newton for 1/√G_jj never leaves this (26 steps of ≤ 1.5× from ≤ 1).
E_BITS = 17


def _dyadic(value: Fraction) -> tuple[int, int]:
    """(numerator, log₂ denominator) of a dyadic rational (the ADMM constants are chosen so)."""
    shift = value.denominator.bit_length() - 1
    if value.denominator != 1 << shift:
        raise ValueError("ADMM constants must be dyadic rationals")
    return value.numerator, shift


#: rρ, r and 1 − r as (numerator, shift): public factors applied exactly inside truncations.
_RHO_RELAX = _dyadic(Fraction(ADMM_RELAX) * Fraction(ADMM_RHO))
_RELAX = _dyadic(Fraction(ADMM_RELAX))
_ONE_MINUS_RELAX = _dyadic(1 - Fraction(ADMM_RELAX))
_INV_RHO = _dyadic(1 / Fraction(ADMM_RHO))


@dataclass(frozen=True)
class Params:
    """Per-problem constants (shares in F_in, frac 40; public constants are their own shares)."""

    gamma: ObjectArray  # (B, d): ridge shift of G_jj
    l1: ObjectArray  # (B, d): λ_j, or λ_j/e_j when ``l1_times_e``
    offdiag: ObjectArray | None  # (B,): factor 1/a on H's off-diagonal (standardised EN/ridge)
    w_scale: ObjectArray | None  # (B,): ŵ = w_scale·e∘u (standardised EN/ridge)
    start: npt.NDArray[np.float64]  # (B, d): public Newton start


@dataclass(frozen=True)
class Fields:
    inp: FieldOps
    work: FieldOps


def l1_max(plan: SolverPlan) -> float:
    """Public bound (≥ 1) on the L1 coefficients of every alpha."""
    return max([1.0, *(abs(v) for ap in plan.alphas for v in ap.l1_public)])


async def _newton_inverse_sqrt(ops: FieldOps, g: ObjectArray, start: npt.NDArray[np.float64]) -> ObjectArray:
    """e ≈ 1/√g (frac 40) by y ← (3y − g·y·y²)/2 from public y₀ ≤ 1/√g; two rounds per step."""
    y = ops.fixed(start, FRAC_IN)
    n = g.size
    for _ in range(NEWTON_ITERATIONS):
        both = await ops.mul(np.concatenate([g.ravel(), y.ravel()]), np.concatenate([y.ravel(), y.ravel()]),
                             FRAC_IN, 2 * FRAC_IN + 2 * E_BITS)
        gy, yy = both[:n].reshape(g.shape), both[n:].reshape(g.shape)
        numerator = 3 * y * (1 << FRAC_IN) - gy * yy
        y = await ops.trunc(numerator % ops.p, FRAC_IN + 1, 2 * FRAC_IN + E_BITS + 3, degree2t=True)
    return y


async def _newton_schulz(
    ops: FieldOps, m: ObjectArray, iterations: int, trace_bound: float, frac: int, x_bits: int,
    step: StepCallback,
) -> ObjectArray:
    """X ≈ M⁻¹ (batched (B, d, d), frac ``frac``) by X ← X(2I − MX) from X₀ = I/trace_bound.

    X₀ commutes with M, so every X_k is a polynomial in M: MX_k has eigenvalues
    in [0, 1] and X_k ≤ 2^k/trace_bound (``x_bits`` bounds it).
    """
    d = m.shape[-1]
    one = 1 << frac
    eye = np.zeros((d, d), dtype=object)
    eye[np.diag_indices(d)] = one
    x = np.broadcast_to(ops.fixed(np.eye(d) / trace_bound, frac), m.shape).copy()
    for _ in range(iterations):
        mx = await ops.matmul(m, x, frac, 2 * frac + math.ceil(math.log2(d)) + 3)
        x = await ops.matmul(x, (2 * eye - mx) % ops.p, frac, 2 * frac + x_bits + math.ceil(math.log2(d)) + 3)
        step(1)
    return x


@dataclass(frozen=True)
class Fit:
    """Shares in F_in: ŵ = e∘u (B, d) frac 40 (rounded), u (B, d) frac 32, e (B, d) frac 40.

    u is exactly 0 off the support, so the revealed e∘u (opened unrounded, at
    frac 72) keeps exact zeros.
    """

    w_hat: ObjectArray
    u: ObjectArray
    e: ObjectArray


async def _prepare(
    fields: Fields, cov: ObjectArray, params: Params, plan: SolverPlan, l1_times_e: bool, l1_max: float,
    step: StepCallback,
) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
    """Jacobi scaling inside MPC: (e, H, q′, λ) in F_in at frac 40 (λ clamped to ρ·KAPPA_CLAMP)."""
    ops, d = fields.inp, plan.d
    cxx, cxy = cov[:, :d, :d], cov[:, :d, d]
    diag = np.einsum("bii->bi", cxx)
    g = (diag + params.gamma) % ops.p
    e = await _newton_inverse_sqrt(ops, g, params.start)
    step(NEWTON_ITERATIONS)
    batch = e.shape[0]
    left = [np.broadcast_to(e[:, :, None], (batch, d, d)).ravel(), e.ravel()]
    right = [np.broadcast_to(e[:, None, :], (batch, d, d)).ravel(), cxy.ravel()]
    if l1_times_e:
        left.append(e.ravel())
        right.append(params.l1.ravel())
    bits = 2 * FRAC_IN + max(2 * E_BITS - 2, E_BITS - 1 + math.ceil(math.log2(l1_max))) + 2
    prods = await ops.mul(np.concatenate(left), np.concatenate(right), FRAC_IN, bits)
    outer = prods[: batch * d * d].reshape(batch, d, d)
    q = prods[batch * d * d : batch * d * (d + 1)].reshape(batch, d)
    lam = prods[batch * d * (d + 1) :].reshape(batch, d) if l1_times_e else params.l1
    gmat = cxx.copy()
    gmat[:, np.arange(d), np.arange(d)] = g
    h = await ops.mul(outer, gmat, FRAC_IN, 2 * FRAC_IN + 3)
    if params.offdiag is not None and params.w_scale is not None:  # standardised EN/ridge: e = e₀/√a
        factor = np.broadcast_to(params.offdiag[:, None, None], h.shape).copy()
        factor[:, np.arange(d), np.arange(d)] = 1 << FRAC_IN
        scaled = await ops.mul(np.concatenate([h.ravel(), q.ravel()]),
                               np.concatenate([factor.ravel(), np.broadcast_to(params.w_scale[:, None], q.shape).ravel()]),
                               FRAC_IN, 2 * FRAC_IN + 3)
        h, q = scaled[: h.size].reshape(h.shape), scaled[h.size :].reshape(q.shape)
    if l1_times_e:
        limit = ADMM_RHO * KAPPA_CLAMP
        excess = (lam - ops.fixed(limit, FRAC_IN)) % ops.p
        below = await ops.less_than_zero(excess, FRAC_IN + E_BITS + math.ceil(math.log2(l1_max)) + 3)
        lam = (ops.fixed(limit, FRAC_IN) + await ops.mul_exact(below, excess)) % ops.p
    return e, h, q, lam


async def _admm(
    ops: FieldOps, h: ObjectArray, q: ObjectArray, kappa: ObjectArray, plan: SolverPlan, step: StepCallback
) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
    """Over-relaxed ADMM in F_w (frac 32): returns z, |z|, and the threshold bits of the last step.

    With K = (H + ρI)⁻¹, ρ = 1/4, r = 7/4 (dyadic, so public factors are exact):
    v = r·Kq′ + rρ·K(z − w) + (1 − r)z + w, z ← S_κ(v), w ← v − z. The local
    product gives v·2^64 of degree 2t; ``FusedThreshold`` truncates and
    soft-thresholds it in 7 rounds.
    """
    p, d = ops.p, plan.d
    shifted = h.copy()
    diagonal = (np.arange(d), np.arange(d))
    shifted[:, diagonal[0], diagonal[1]] = (shifted[:, diagonal[0], diagonal[1]] + ops.fixed(ADMM_RHO, FRAC_W)) % p
    k = await _newton_schulz(ops, shifted, plan.ns_k_iterations, d + ADMM_RHO, FRAC_W, 3, step)
    (num_a, shift_a), (num_c, shift_c), (num_z, shift_z) = _RHO_RELAX, _RELAX, _ONE_MINUS_RELAX
    a1 = await ops.trunc((num_a * k) % p, shift_a, FRAC_W + 6)  # rρ·K
    kq = np.einsum("bij,bj->bi", k, q)
    c1 = await ops.trunc((num_c * kq) % p, FRAC_W + shift_c, 2 * FRAC_W + 12, degree2t=True)  # r·Kq′
    threshold = FusedThreshold(ops, kappa, FRAC_W, ADMM_X_BITS, plan.admm_iterations)
    z = np.zeros(q.shape, dtype=object)
    w = np.zeros(q.shape, dtype=object)
    out: tuple[ObjectArray, ...] = ()
    for _ in range(plan.admm_iterations):
        local = (np.einsum("bij,bj->bi", a1, (z - w) % p) + num_z * z * (1 << (FRAC_W - shift_z))
                 + (c1 + w) * (1 << FRAC_W))
        v, z, z_abs, above, below = await threshold.step(local % p)
        w = (v - z) % p
        out = (z, z_abs, above, below)
        step(1)
    return out  # type: ignore[return-value]


async def _select(
    ops: FieldOps, h: ObjectArray, q: ObjectArray, lam: ObjectArray, z: ObjectArray, z_abs: ObjectArray,
    polished: ObjectArray, polish_bits: int,
) -> ObjectArray:
    """The polished point (clipped to |·| ≤ 2^(ADMM_BITS−1)) if it lowers F, else z (frac 32, F_in).

    With δ = w − z: 2(F(w) − F(z)) = 2δᵀ(Hz − q′) + δᵀHδ + 2λᵀ(|w| − |z|). Near the
    optimum this is O(δ²) ≈ 1e−12, below the 2^−32 resolution of the iterates, so
    the three products are summed unrounded at frac 64 before the comparison.
    """
    p, f = ops.p, FRAC_POLISH
    bound = ops.fixed(2.0 ** (ADMM_BITS - 1), f)
    args = np.concatenate([(bound - polished).ravel(), (polished + bound).ravel(), polished.ravel()]) % p
    bits = await ops.less_than_zero(args, polish_bits)
    n = polished.size
    g_hi, g_lo, neg = (bits[i * n : (i + 1) * n].reshape(polished.shape) for i in range(3))
    prods = await ops.mul_exact(np.concatenate([g_hi.ravel(), g_lo.ravel(), neg.ravel()]),
                                np.concatenate([polished.ravel()] * 3))
    hw, lw, nw = (prods[i * n : (i + 1) * n].reshape(polished.shape) for i in range(3))
    clipped = (polished + (g_hi - g_lo) * bound - hw - lw) % p
    clipped_abs = (polished - 2 * nw + (g_hi + g_lo) * bound - hw + lw) % p
    delta = (clipped - z) % p
    both = np.stack([z, delta], axis=1)  # (B, 2, d)
    hb = await ops.matmul(both, np.swapaxes(h, 1, 2), f, 2 * f + ADMM_BITS + math.ceil(math.log2(4 * z.shape[1])))
    grad = (hb[:, 0] - q) % p
    twice = (2 * delta * grad + delta * hb[:, 1] + 2 * lam * ((clipped_abs - z_abs) % p)).sum(axis=1) % p
    twice = await ops.reduce(twice)  # 2·ΔF at frac 64, degree t
    better = await ops.less_than_zero(twice, 2 * f + 2 * ADMM_BITS + math.ceil(math.log2(z.shape[1])) + 12)
    choice = await ops.mul_exact(better[:, None], delta)
    return (z + choice) % p


async def _polish(
    ops: FieldOps, h: ObjectArray, q: ObjectArray, lam: ObjectArray, bits: tuple[ObjectArray, ObjectArray] | None,
    plan: SolverPlan, step: StepCallback,
) -> ObjectArray:
    """Solve H_SS u_S = q′_S − λ_S s_S on the support S of z (all features for ridge), frac 32.

    M = (aaᵀ)∘H + diag(1 − a) has unit diagonal, so Newton–Schulz starts at I/d.
    """
    p, d, f = ops.p, plan.d, FRAC_POLISH
    if bits is None:
        m, rhs = h, q
    else:
        above, below = bits
        a, s = (above + below) % p, (above - below) % p
        batch = a.shape[0]
        pair = await ops.mul_exact(
            np.concatenate([np.broadcast_to(a[:, :, None], (batch, d, d)).ravel(), lam.ravel()]),
            np.concatenate([np.broadcast_to(a[:, None, :], (batch, d, d)).ravel(), s.ravel()]),
        )
        aa, ls = pair[: batch * d * d].reshape(batch, d, d), pair[batch * d * d :].reshape(batch, d)
        masked = await ops.mul_exact(np.concatenate([aa.ravel(), a.ravel()]),
                                     np.concatenate([h.ravel(), ((q - ls) % p).ravel()]))
        m = masked[: batch * d * d].reshape(batch, d, d)
        m[:, np.arange(d), np.arange(d)] = (m[:, np.arange(d), np.arange(d)] + (1 - a) * (1 << f)) % p
        rhs = masked[batch * d * d :].reshape(batch, d)
    x_bits = plan.ns_polish_iterations + 1
    x = await _newton_schulz(ops, m, plan.ns_polish_iterations, float(d), f, x_bits, step)
    solved = (await ops.matmul(x, rhs[:, :, None], f, 2 * f + x_bits + 12))[:, :, 0]
    if bits is None:
        return solved
    return await ops.mul_exact(a, solved)  # exact zeros off the support


async def fit_batch(
    fields: Fields, cov: ObjectArray, params: Params, plan: SolverPlan, l1_times_e: bool, step: StepCallback,
) -> Fit:
    """B independent fits (one per covariance in ``cov``) in one batch of rounds."""
    inp, work = fields.inp, fields.work
    e, h, q, lam = await _prepare(fields, cov, params, plan, l1_times_e, l1_max(plan), step)
    batch, d = q.shape
    sizes = [h.size, q.size, lam.size]
    low = await inp.trunc(np.concatenate([h.ravel(), q.ravel(), lam.ravel()]), FRAC_IN - FRAC_POLISH, FRAC_IN + 10)
    h32 = low[: sizes[0]].reshape(h.shape)
    q32 = low[sizes[0] : sizes[0] + sizes[1]].reshape(q.shape)
    lam32 = low[sizes[0] + sizes[1] :].reshape(lam.shape)
    if plan.has_l1:
        num_k, shift_k = _INV_RHO  # κ = λ/ρ
        assert shift_k == 0, "1/ρ must be an integer"
        moved = await inp.convert(np.concatenate([h32.ravel(), q32.ravel(), (num_k * lam32).ravel()]) % inp.p,
                                  work, FRAC_POLISH + 11)
        h_w = moved[: sizes[0]].reshape(h.shape)
        q_w = moved[sizes[0] : sizes[0] + sizes[1]].reshape(q.shape)
        kappa_w = moved[sizes[0] + sizes[1] :].reshape(lam.shape)
        z, z_abs, above, below = await _admm(work, h_w, q_w, kappa_w, plan, step)
        back = await work.convert(np.concatenate([z.ravel(), z_abs.ravel(), above.ravel(), below.ravel()]),
                                  inp, FRAC_W + ADMM_BITS + 1)
        z, z_abs, above, below = (back[i * z.size : (i + 1) * z.size].reshape(z.shape) for i in range(4))
        polished = await _polish(inp, h32, q32, lam32, (above, below), plan, step)
        u = await _select(inp, h32, q32, lam32, z, z_abs, polished,
                          FRAC_POLISH + plan.ns_polish_iterations + 12)
    else:
        u = await _polish(inp, h32, q32, lam32, None, plan, step)
    if params.w_scale is not None:
        e = await inp.mul(e, params.w_scale[:, None], FRAC_IN, 2 * FRAC_IN + E_BITS + 2)
    w_hat = await inp.mul(e, u, FRAC_POLISH, FRAC_IN + FRAC_POLISH + E_BITS + ADMM_BITS + 2)
    return Fit(w_hat, u, e)


# ---- parameters, cross-validation, reveal ---------------------------------------------------------
