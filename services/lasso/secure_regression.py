"""Secure lasso / elastic-net / ridge regression on the join's additive shares (MPyC).

One party of three runs ``secure_fit`` (or ``run_party``) with its own share
matrix; the two data owners (MPC parties 0 and 1) receive the coefficients,
the helper (party 2) receives nothing. The algorithm is ``plan``'s; its
float64 twin is ``plain_reference.fit_plain``.

Phases (with the ``on_progress`` phase names):

input       Each party Shamir-shares its integer shares mod p (``secure_input``)
            and computes, per fold of the permuted rows, its local shares of
            P = Σ x′x′ᵀ (degree 2t, exact, BLAS on limbs) and s = Σ x′.
gram        For each row set R (the whole join, and per fold its training and
            validation rows), n = |R|: N = n·P − s sᵀ = n²·2^64·Cov (exact,
            invariant to the public offsets), then Ĉ = N/(n²·2^64·h_i h_j) and
            μ̂ = (s − n·offset)/(n·2^32·h) with public per-entry divisors (two
            truncation rounds) — the range-normalised covariance and means.
iterations  Per fit: Newton for e = 1/√G_jj, H = diag(e)·G·diag(e), q′, λ;
            K = (H + ρI)⁻¹ by Newton–Schulz; ADMM with one secure
            matrix-vector product and one batched comparison (both
            soft-threshold comparisons of all coordinates and all problems in
            one call) per iteration; polishing on the detected support and a
            secure choice of the better point. Cross-validation fits all folds ×
            alphas as one batch, computes each validation MSE from the
            validation moments, averages per alpha, picks the best alpha with
            secure comparisons (one-hot, never opened to the helper) and refits
            on the whole join with it.
reveal      ŵ, b̂ (and u, the CV curve and the alpha index when asked) are
            opened to parties 0 and 1 only; the public affine map back to the
            original scale is applied in the clear.

Fields. Gram and everything before the iterations run in a large prime field
F_in (fixed point with ``FRAC_IN`` = 40 fractional bits; its size follows from
m and the declared ranges so that N never wraps); ADMM runs in a smaller field
F_w (``FRAC_W`` = 32) where comparisons — 80–90% of an iteration — are cheaper.
Values move between them by one masked opening (``FieldOps.convert``).

Assumptions (documented limits): every |ADMM quantity| < 2^8 in the
normalised units (thresholds are clamped to 2^6), |ŵ_j| < 2^10, σ_j/h_j ≥ 2^−11 (feature
spread vs declared half-range), and near-collinear data (λ_min(H) <
``plan.POLISH_EIGENVALUE_FLOOR``) may need more iterations than the default.

Runtime. Pass a started MPyC runtime (``mpc_runtime.create_runtime``; MPyC's
TCP via ``await mpc.start()`` or another transport). MPyC is imported only by
``mpc_runtime``; this module never imports it at module level.

References: MPyC (Schoenmakers, https://github.com/lschoe/mpyc); Boyd et al.
2011 (ADMM for the lasso); Catrina & Saxena 2010 (probabilistic truncation);
Schulz 1933 / Pan & Schreiber 1991 (Newton–Schulz inversion).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.plan import ADMM_RELAX, ADMM_RHO, NEWTON_ITERATIONS, AlphaPlan, SolverPlan, make_plan
from services.lasso.secure_input import FoldSums, share_and_multiply
from services.lasso.secure_ops import FieldOps
from services.lasso.secure_threshold import FusedThreshold, threshold_field_bits
from services.lasso.spec import RegressionResult, RegressionSpec, check_table_shape

ObjectArray = npt.NDArray[np.object_]
ProgressCallback = Callable[[str, int, int], None]

FRAC_IN = 40
FRAC_W = 32
FRAC_POLISH = 32
FRAC_TABLE = 32  # fractional bits of the join's encoding
ENCODING_OFFSET = 1 << 63
#: |ADMM values| < 2^(ADMM_BITS − 1) = 256 in the normalised units (see the module docstring);
#: with this bound F_w is a 128-bit prime (two 64-bit limbs: its modular square roots, the
#: bulk of a comparison, are ~30% cheaper than at 130 bits).
ADMM_BITS = 9
#: Bits of x = v·2^64 in an ADMM step (|v| < 2^(ADMM_BITS)); comparisons use ADMM_X_BITS − 32 = 42.
ADMM_X_BITS = 2 * FRAC_W + ADMM_BITS + 1
#: Soft-threshold levels κ = λ/ρ are clamped to this (a coefficient with a larger κ is 0 unless
#: a gradient entry exceeds ρ·KAPPA_CLAMP = 16 in the normalised units).
KAPPA_CLAMP = 2.0**6
#: |ŵ_j| < 2^(W_HAT_BITS − 1): normalised coefficients (effect of x_j's half-range in y half-ranges).
W_HAT_BITS = 11
#: |e_j| < 2^(E_BITS − 1): Newton for 1/√G_jj never leaves this (26 steps of ≤ 1.5× from ≤ 1).
E_BITS = 17
OWNERS = [0, 1]


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


@dataclass
class _Progress:
    callback: ProgressCallback | None
    done: int = 0
    total: int = 0

    def report(self, phase: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(phase, done, total)

    def step(self, count: int = 1) -> None:
        self.done += count
        self.report("iterations", self.done, self.total)


@dataclass(frozen=True)
class _Moments:
    """Shares (F_in, frac 40) of Ĉ ((S, c, c), features then target) and μ̂ ((S, c))."""

    cov: ObjectArray
    mean: ObjectArray


@dataclass(frozen=True)
class _Params:
    """Per-problem constants (shares in F_in, frac 40; public constants are their own shares)."""

    gamma: ObjectArray  # (B, d): ridge shift of G_jj
    l1: ObjectArray  # (B, d): λ_j, or λ_j/e_j when ``l1_times_e``
    offdiag: ObjectArray | None  # (B,): factor 1/a on H's off-diagonal (standardised EN/ridge)
    w_scale: ObjectArray | None  # (B,): ŵ = w_scale·e∘u (standardised EN/ridge)
    start: npt.NDArray[np.float64]  # (B, d): public Newton start


@dataclass(frozen=True)
class _Fields:
    inp: FieldOps
    work: FieldOps


def _l1_max(plan: SolverPlan) -> float:
    """Public bound (≥ 1) on the L1 coefficients of every alpha."""
    return max([1.0, *(abs(v) for ap in plan.alphas for v in ap.l1_public)])


def _mse_bits(d: int) -> int:
    """Bits of ω∘(Ĉω) and (δᵀω)² at frac 80 for |ŵ| < 2^(W_HAT_BITS−1), |Ĉ| ≤ 1, |δ| ≤ 2."""
    return 2 * FRAC_IN + 2 * W_HAT_BITS + 2 * math.ceil(math.log2(d + 1)) + 4


def _field_bits(plan: SolverPlan, kappa: int) -> tuple[int, int]:
    """Prime sizes (bits) of F_in and F_w for this plan (see the bounds at each call)."""
    h_max = max(plan.halves)
    gram_bits = math.ceil(2 * math.log2(plan.n_rows) + 2 * FRAC_TABLE + 2 * math.log2(h_max)) + 3
    lam_bits = 2 * FRAC_IN + E_BITS + math.ceil(math.log2(_l1_max(plan))) + 2
    cv_bits = _mse_bits(plan.d) if plan.folds else 0
    cap_in = max(gram_bits, lam_bits, cv_bits, 116)
    return cap_in + kappa + 3, threshold_field_bits(kappa, FRAC_W, ADMM_X_BITS)


def _fields(mpc: Any, plan: SolverPlan) -> _Fields:
    kappa = mpc.options.sec_param
    bits_in, bits_w = _field_bits(plan, kappa)
    # MPyC picks a prime of l + f + κ + 2 bits for SecFxp(l, f).
    stype_in = mpc.SecFxp(bits_in - FRAC_TABLE - kappa - 2, FRAC_TABLE)
    stype_w = mpc.SecFxp(bits_w - FRAC_W - kappa - 2, FRAC_W)
    return _Fields(FieldOps(mpc, stype_in), FieldOps(mpc, stype_w))


# ---- gram ---------------------------------------------------------------------------------------


def _row_sets(sums: list[FoldSums]) -> list[tuple[ObjectArray, ObjectArray, int]]:
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


async def _scale(ops: FieldOps, x: ObjectArray, divisor: npt.NDArray[np.float64]) -> ObjectArray:
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
    factors = np.array([round(2.0 ** (88 - top + e + cut) / v) for e, v in zip(exps, flat_div)], dtype=object)
    scaled = await ops.trunc(lowered * factors, 48, 92, degree2t=True)
    return scaled.reshape(x.shape)


async def _moments(ops: FieldOps, sums: list[FoldSums], plan: SolverPlan, order: list[int]) -> _Moments:
    """Normalised covariances and means of every row set (two rounds for all of them)."""
    sets = _row_sets(sums)
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
        divisors += [(n * n * 2.0 ** (2 * FRAC_TABLE) * np.outer(halves, halves)).reshape(-1), n * 2.0**FRAC_TABLE * halves]
    scaled = await _scale(ops, np.concatenate(blocks), np.concatenate(divisors))
    c = len(order)
    per_set = scaled.reshape(len(sets), c * c + c)
    return _Moments(per_set[:, : c * c].reshape(len(sets), c, c), per_set[:, c * c :])


# ---- one batch of fits ----------------------------------------------------------------------------


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
    progress: _Progress,
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
        progress.step()
    return x


@dataclass(frozen=True)
class _Fit:
    """Shares in F_in: ŵ = e∘u (B, d) frac 40 (rounded), u (B, d) frac 32, e (B, d) frac 40.

    u is exactly 0 off the support, so the revealed e∘u (opened unrounded, at
    frac 72) keeps exact zeros.
    """

    w_hat: ObjectArray
    u: ObjectArray
    e: ObjectArray


async def _prepare(
    fields: _Fields, cov: ObjectArray, params: _Params, plan: SolverPlan, l1_times_e: bool, l1_max: float,
    progress: _Progress,
) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
    """Jacobi scaling inside MPC: (e, H, q′, λ) in F_in at frac 40 (λ clamped to ρ·KAPPA_CLAMP)."""
    ops, d = fields.inp, plan.d
    cxx, cxy = cov[:, :d, :d], cov[:, :d, d]
    diag = np.einsum("bii->bi", cxx)
    g = (diag + params.gamma) % ops.p
    e = await _newton_inverse_sqrt(ops, g, params.start)
    progress.step(NEWTON_ITERATIONS)
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
    ops: FieldOps, h: ObjectArray, q: ObjectArray, kappa: ObjectArray, plan: SolverPlan, progress: _Progress
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
    k = await _newton_schulz(ops, shifted, plan.ns_k_iterations, d + ADMM_RHO, FRAC_W, 3, progress)
    (num_a, shift_a), (num_c, shift_c), (num_z, shift_z) = _RHO_RELAX, _RELAX, _ONE_MINUS_RELAX
    a1 = await ops.trunc((num_a * k) % p, shift_a, FRAC_W + 6)  # rρ·K
    kq = np.einsum("bij,bj->bi", k, q)
    c1 = await ops.trunc((num_c * kq) % p, FRAC_W + shift_c, 2 * FRAC_W + 12, degree2t=True)  # r·Kq′
    step = FusedThreshold(ops, kappa, FRAC_W, ADMM_X_BITS, plan.admm_iterations)
    z = np.zeros(q.shape, dtype=object)
    w = np.zeros(q.shape, dtype=object)
    out: tuple[ObjectArray, ...] = ()
    for _ in range(plan.admm_iterations):
        local = (np.einsum("bij,bj->bi", a1, (z - w) % p) + num_z * z * (1 << (FRAC_W - shift_z))
                 + (c1 + w) * (1 << FRAC_W))
        v, z, z_abs, above, below = await step.step(local % p)
        w = (v - z) % p
        out = (z, z_abs, above, below)
        progress.step()
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
    plan: SolverPlan, progress: _Progress,
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
    x = await _newton_schulz(ops, m, plan.ns_polish_iterations, float(d), f, x_bits, progress)
    solved = (await ops.matmul(x, rhs[:, :, None], f, 2 * f + x_bits + 12))[:, :, 0]
    if bits is None:
        return solved
    return await ops.mul_exact(a, solved)  # exact zeros off the support


async def _fit_batch(
    fields: _Fields, cov: ObjectArray, params: _Params, plan: SolverPlan, l1_times_e: bool, progress: _Progress,
) -> _Fit:
    """B independent fits (one per covariance in ``cov``) in one batch of rounds."""
    inp, work = fields.inp, fields.work
    e, h, q, lam = await _prepare(fields, cov, params, plan, l1_times_e, _l1_max(plan), progress)
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
        z, z_abs, above, below = await _admm(work, h_w, q_w, kappa_w, plan, progress)
        back = await work.convert(np.concatenate([z.ravel(), z_abs.ravel(), above.ravel(), below.ravel()]),
                                  inp, FRAC_W + ADMM_BITS + 1)
        z, z_abs, above, below = (back[i * z.size : (i + 1) * z.size].reshape(z.shape) for i in range(4))
        polished = await _polish(inp, h32, q32, lam32, (above, below), plan, progress)
        u = await _select(inp, h32, q32, lam32, z, z_abs, polished,
                          FRAC_POLISH + plan.ns_polish_iterations + 12)
    else:
        u = await _polish(inp, h32, q32, lam32, None, plan, progress)
    if params.w_scale is not None:
        e = await inp.mul(e, params.w_scale[:, None], FRAC_IN, 2 * FRAC_IN + E_BITS + 2)
    w_hat = await inp.mul(e, u, FRAC_POLISH, FRAC_IN + FRAC_POLISH + E_BITS + ADMM_BITS + 2)
    return _Fit(w_hat, u, e)


# ---- parameters, cross-validation, reveal ---------------------------------------------------------


def _public_params(ops: FieldOps, plans: Sequence[AlphaPlan], standardize: bool) -> _Params:
    """Constants of the given alphas (one problem each) as public 'shares'."""
    clamp = ADMM_RHO * KAPPA_CLAMP
    gamma = ops.fixed([ap.diag_shift for ap in plans], FRAC_IN)
    l1 = ops.fixed([[min(v, clamp) if standardize else v for v in ap.l1_public] for ap in plans], FRAC_IN)
    scaled = standardize and any(ap.diag_scale != 1 for ap in plans)
    offdiag = ops.fixed([1 / ap.diag_scale for ap in plans], FRAC_IN) if scaled else None
    w_scale = ops.fixed([1 / math.sqrt(ap.diag_scale) for ap in plans], FRAC_IN) if scaled else None
    start = np.array([ap.newton_start for ap in plans], dtype=np.float64)
    return _Params(gamma, l1, offdiag, w_scale, start)


def _chosen_params(ops: FieldOps, plans: Sequence[AlphaPlan], onehot: ObjectArray, standardize: bool) -> _Params:
    """Constants of the secretly chosen alpha: Σ_a onehot_a·constant_a (local, exact)."""
    table = _public_params(ops, plans, standardize)

    def pick(values: ObjectArray | None) -> ObjectArray | None:
        if values is None:
            return None
        weights = onehot.reshape((-1,) + (1,) * (values.ndim - 1))
        return (weights * values).sum(axis=0, keepdims=True) % ops.p

    start = table.start.min(axis=0, keepdims=True)
    return _Params(pick(table.gamma), pick(table.l1), pick(table.offdiag), pick(table.w_scale), start)  # type: ignore[arg-type]


async def _validation_mse(ops: FieldOps, w_hat: ObjectArray, train: _Moments, valid: _Moments) -> ObjectArray:
    """(B,) shares of ωᵀĈ_valid ω + (δᵀω)², ω = [−ŵ; 1], δ = μ̂_valid − μ̂_train (frac 40)."""
    p, f = ops.p, FRAC_IN
    batch = w_hat.shape[0]
    omega = np.concatenate([(-w_hat) % p, np.full((batch, 1), 1 << f, dtype=object)], axis=1)
    delta = (valid.mean - train.mean) % p
    c_omega = np.einsum("bij,bj->bi", valid.cov, omega)
    d_omega = np.einsum("bj,bj->b", delta, omega)
    d1 = w_hat.shape[1] + 1
    first = await ops.trunc(np.concatenate([c_omega.ravel(), d_omega]) % p, f,
                            2 * f + W_HAT_BITS + math.ceil(math.log2(d1)) + 3, degree2t=True)
    c_omega, d_omega = first[: c_omega.size].reshape(c_omega.shape), first[c_omega.size :]
    second = await ops.mul(np.concatenate([omega.ravel(), d_omega]), np.concatenate([c_omega.ravel(), d_omega]),
                           f, _mse_bits(d1 - 1))
    quad = second[: omega.size].reshape(omega.shape).sum(axis=1)
    return (quad + second[omega.size :]) % p


async def _argmin_onehot(ops: FieldOps, values: ObjectArray, bits: int) -> ObjectArray:
    """One-hot shares of the first index of the minimum (sequential scan, strict <)."""
    count = len(values)
    best = values[0]
    onehot = np.zeros(count, dtype=object)
    onehot[0] = 1
    for a in range(1, count):
        less = await ops.less_than_zero(np.array([(values[a] - best) % ops.p], dtype=object), bits)
        unit = np.zeros(count, dtype=object)
        unit[a] = 1
        moves = await ops.mul_exact(np.full(count + 1, less[0], dtype=object),
                                    np.concatenate([[(values[a] - best) % ops.p], (unit - onehot) % ops.p]))
        best = (best + moves[0]) % ops.p
        onehot = (onehot + moves[1:]) % ops.p
    return onehot


def _stage_steps(plan: SolverPlan) -> int:
    admm = plan.ns_k_iterations + plan.admm_iterations if plan.has_l1 else 0
    return NEWTON_ITERATIONS + admm + plan.ns_polish_iterations


async def secure_fit(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Run this party's side of the secure regression; parties 0 and 1 get the result, 2 gets None.

    ``mpc`` is a started MPyC runtime (all parties call this with the same
    ``spec``); ``shares`` is this party's m × c integer share matrix, columns as
    ``spec.ranges``. ``on_progress(phase, done, total)`` receives counts only.
    """
    table = np.asarray(shares, dtype=object)
    if table.ndim != 2:
        raise ValueError("shares must be a matrix")
    rows, columns = table.shape
    check_table_shape(rows, columns, spec)
    plan = make_plan(spec, rows)
    fields = _fields(mpc, plan)
    inp = fields.inp
    progress = _Progress(on_progress)
    progress.total = _stage_steps(plan) * (2 if spec.cross_validate else 1)
    parties = len(mpc.parties)
    zero = [frozenset[int]() for _ in range(parties)]
    if spec.column_owners and parties == 3:
        zero = [frozenset(j for j, o in enumerate(spec.column_owners) if o == i) for i in range(parties)]

    progress.report("input", 0, rows)
    folds = list(plan.folds) or [(0, rows)]
    sums = await share_and_multiply(inp, table, folds, zero, lambda done: progress.report("input", done, rows))
    progress.report("gram", 0, 1)
    moments = await _moments(inp, sums, plan, [*spec.feature_columns, spec.target])
    progress.report("gram", 1, 1)

    progress.report("iterations", 0, progress.total)
    onehot: ObjectArray | None = None
    curve: ObjectArray | None = None
    if spec.cross_validate:
        folds_n, alphas_n = len(plan.folds), len(plan.alphas)
        train_idx = [1 + 2 * k for k in range(folds_n) for _ in range(alphas_n)]
        valid_idx = [2 + 2 * k for k in range(folds_n) for _ in range(alphas_n)]
        params = _public_params(inp, list(plan.alphas) * folds_n, spec.standardize)
        fit = await _fit_batch(fields, moments.cov[train_idx], params, plan, not spec.standardize, progress)
        train = _Moments(moments.cov[train_idx], moments.mean[train_idx])
        valid = _Moments(moments.cov[valid_idx], moments.mean[valid_idx])
        mse = await _validation_mse(inp, fit.w_hat, train, valid)
        curve = mse.reshape(folds_n, alphas_n).sum(axis=0) % inp.p
        onehot = await _argmin_onehot(inp, curve, FRAC_IN + 2 * W_HAT_BITS + 20)
        final = _chosen_params(inp, plan.alphas, onehot, spec.standardize)
    else:
        final = _public_params(inp, plan.alphas, spec.standardize)
    fit = await _fit_batch(fields, moments.cov[:1], final, plan, not spec.standardize, progress)

    progress.report("reveal", 0, 1)
    mean = moments.mean[0]
    intercept_terms = await inp.mul(fit.w_hat[0], mean[:-1], FRAC_IN, 2 * FRAC_IN + W_HAT_BITS + 2)
    b_hat = (mean[-1] - intercept_terms.sum()) % inp.p
    opened = [np.array([b_hat], dtype=object), fit.u[0] * (1 << (FRAC_IN - FRAC_POLISH))]
    if onehot is not None:
        index = (onehot * np.arange(len(onehot), dtype=object)).sum() << FRAC_IN
        opened += [np.array([index], dtype=object)]
        if spec.reveal_cv_curve and curve is not None:
            opened += [curve]
    exact_w = fit.e[0] * fit.u[0]  # degree 2t, frac 72: no rounding, exact zeros
    values = await inp.output_product(np.concatenate([exact_w, *opened]) % inp.p, OWNERS)
    progress.report("reveal", 1, 1)
    if values is None:
        return None
    d = plan.d
    w_hat = inp.to_float(values[:d], FRAC_IN + FRAC_POLISH)
    return _result(w_hat, inp.to_float(values[d:], FRAC_IN), plan, spec)


def _result(
    w_hat: npt.NDArray[np.float64], values: npt.NDArray[np.float64], plan: SolverPlan, spec: RegressionSpec
) -> RegressionResult:
    """Decode, on an owner, the opened ŵ and [b̂, u, (alpha index, (CV sums))]."""
    d = plan.d
    b_hat, u, rest = float(values[0]), values[1 : d + 1], values[d + 1 :]
    chosen = plan.alphas[int(round(rest[0]))] if spec.cross_validate else plan.alphas[0]
    w, b = plan.to_original(list(w_hat), b_hat)
    standardized = None
    if spec.standardize:
        standardized = tuple(float(v) for v in plan.h_y * u / math.sqrt(chosen.diag_scale))
    cv_curve: tuple[tuple[float, float], ...] = ()
    if spec.cross_validate and spec.reveal_cv_curve:
        scale = plan.h_y**2 / len(plan.folds)
        cv_curve = tuple((ap.alpha, float(v) * scale) for ap, v in zip(plan.alphas, rest[1:]))
    return RegressionResult(
        coefficients=tuple(float(v) for v in w),
        intercept=b,
        alpha=chosen.alpha,
        joined=plan.n_rows,
        iterations=plan.admm_iterations,
        standardized_coefficients=standardized,
        cv_curve=cv_curve,
    )


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime (``mpc.start``, which a transport may replace), fit, shut down.

    Call as ``mpc.run(run_party(mpc, shares, spec))`` in a process that owns the runtime.
    """
    await mpc.start()
    try:
        result = await secure_fit(mpc, shares, spec, on_progress)
    except BaseException:
        for peer in mpc.parties:
            if peer.pid != mpc.pid and peer.protocol is not None:
                peer.protocol.close_connection()
        raise
    await mpc.shutdown()
    return result
