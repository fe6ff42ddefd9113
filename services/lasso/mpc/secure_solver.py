"""B regressions at once on normalised moments (MPyC): Jacobi scaling, ADMM in segments,
polishing, a convergence certificate, selection and restarts.

Input: shares of Ĉ ((B, d+1, d+1), target last, ``secure_gram``) and the
per-problem constants ``Params`` (public per alpha, or one-hot combinations
of them when cross-validation chose the alpha secretly). Steps (see ``plan``
for the maths):

1. Newton for e = 1/√G_jj (two rounds per step) from a start within √2 that one
   batched comparison with public bands finds (``_banded_start``, which also decides
   the clamp of λ so that κ = λ/ρ ≤ ``KAPPA_CLAMP``), then H = diag(e)·G·diag(e)
   (unit diagonal), q′ = e∘Ĉ_xy and λ, in F_in at 40 fractional bits.
2. ADMM in the 128-bit field F_w at 32 fractional bits: K = (H + ρI)⁻¹ by
   Newton–Schulz in product form (``_newton_schulz``), then per iteration one
   local matrix-vector product and one ``FusedThreshold`` step (7 rounds: truncation and both comparisons of every
   coordinate of every problem in one batch).
3. At every checkpoint of ``plan.checkpoints``, in F_in:
   * polish: Newton–Schulz on the support and signs of z (frac 40), one step of
     iterative refinement (residual at frac 56), and one fused threshold that
     truncates to frac 48, masks the support (exact zeros) and clips to
     ±2^(ADMM_BITS−1);
   * check (``_check``): one fused threshold compares every |g_j| of the
     polished point (g = Hu − q′) with its dual bound, the certificate's gap
     test for every public slack, and 2(F(polished) − F(z)) with 0; the
     certificate bits are combined into one number that is zero exactly when
     every fit of the batch is certified, and a random multiple of it is
     opened (one bit of leakage);
   * otherwise: where the polished point is better, ADMM restarts from it
     (z = u, w = −clip(g)/ρ), elsewhere it goes on; at the last checkpoint the
     better of the two is the result.

Bounds. Every truncation and comparison is sized for the worst case of its
inputs (``Bounds``), not for typical values: a wrong support can make the
polished solve huge, so it is clipped before the refinement uses it. The
remaining assumptions (documented in services/lasso/REGRESSION.md) are those of
ADMM itself: |ADMM values| < 2^(ADMM_BITS−1) = 256 in the normalised units,
|ŵ| < 2^10, σ_j/h_j ≳ 2^−11 (the band comparison then starts Newton at g·y₀² ≥ 1/4).
Steps that do not depend on each other share a round (``_together``), see
docs/adr/0012-lasso-mpc-rounds.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from services.lasso.core.plan import (
    ADMM_RELAX,
    ADMM_RHO,
    CERTIFICATE_TOLERANCE,
    DUAL_SLACKS,
    NEWTON_ITERATIONS,
    RIDGE_GRADIENT_BOUND,
    SLACK_SQUARE_GRAIN,
    SolverPlan,
    gap_tolerance,
)
from services.lasso.mpc.secure_gram import FRAC_IN
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_threshold import (
    MAX_BITS_PER_BATCH,
    FusedThreshold,
    threshold_bits_needed,
    threshold_field_bits,
)

ObjectArray = npt.NDArray[np.object_]
StepCallback = Callable[[int], None]

FRAC_W = 32
#: Polished and selected points, their absolute values and gradients (F_in).
FRAC_U = 48
#: The refinement step's residual.
FRAC_R = 56
#: The certificate's sums λᵀ|u|, uᵀg, q′ᵀu (and ‖g‖² for ridge) after one truncation.
FRAC_S = 60
#: The certificate's test values are integer combinations of those sums once scaled by 2^CERT_SCALE.
CERT_SCALE = 42
#: Fractional bits of the certificate's comparisons (x = value·2^(FRAC_S + CERT_SCALE) = value·2^(2·51)).
FRAC_CERT = (FRAC_S + CERT_SCALE) // 2
#: |ADMM values| < 2^(ADMM_BITS − 1) = 256 in the normalised units; with this bound F_w is a
#: 128-bit prime (two 64-bit limbs: its modular square roots, the bulk of a comparison, are
#: ~30% cheaper than at 130 bits).
ADMM_BITS = 9
#: Bits of x = v·2^64 in an ADMM step (|v| < 2^ADMM_BITS); comparisons use ADMM_X_BITS − 32 = 42.
ADMM_X_BITS = 2 * FRAC_W + ADMM_BITS + 1
#: Soft-threshold levels κ = λ/ρ are clamped to this (a coefficient with a larger κ is 0: every
#: gradient entry of a point no worse than u = 0 is below ρ·KAPPA_CLAMP = 4 in the normalised units).
KAPPA_CLAMP = 2.0**6
#: |ŵ_j| < 2^(W_HAT_BITS − 1): normalised coefficients (effect of x_j's half-range in y half-ranges).
W_HAT_BITS = 11
#: |e_j| < 2^(E_BITS − 1): Newton for 1/√G_jj never leaves this (26 steps of ≤ 1.5× from ≤ 1).
E_BITS = 17
#: |q′_j − λ_j s_j| ≤ 1 + ρ·KAPPA_CLAMP = 5 < 2^(RHS_BITS − 1).
RHS_BITS = 4
#: Error bound (in units of 2^−FRAC_U) of the computed gradient: two truncations of [−1, 2) ulp each.
GRADIENT_ERROR_ULPS = 4
#: Newton's start for e = 1/√g comes from one batched comparison of g with the public bands
#: g·s² < 2^−k, k = 1 … START_BANDS (``_banded_start``; more bands when the public start s < 1).
START_BANDS = 22
#: Fractional bits of the band comparisons (their error is below 2^−25 in g).
FRAC_BAND = 26
#: Newton steps from the banded start: w₀ = g·y₀² ∈ [1/4, 1.2), so 1 − w ≤ 3/4 falls below 2^−40
#: after 6 steps (1 − w ← (3(1 − w)² + (1 − w)³)/4); one more for the rounding.
START_NEWTON = 7
#: The clamp of λ_j = l1_j·e_j to ρ·KAPPA_CLAMP is decided on g: λ_j > ρ·KAPPA_CLAMP ⟺ g < (l1_j/(ρ·KAPPA_CLAMP))².
#: The threshold is lowered by this (above the comparison's error), so a λ_j below the clamp is never raised.
CLAMP_MARGIN = 2.0**-24


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


def _log2(n: float) -> int:
    """⌈log₂ n⌉, at least 1."""
    return max(1, math.ceil(math.log2(n)))


@dataclass(frozen=True)
class Bounds:
    """Signed bit bounds (|value| < 2^(bits − 1)) of the solver's openings in F_in.

    From the plan only: d, and the Newton–Schulz iterations k of the polish, whose
    iterates X_k are polynomials in M with eigenvalues ≤ 2^k/d (Schulz), so
    |X_k| < 2^x_bits whatever the data.
    """

    d: int
    ns_iterations: int

    @property
    def log_d(self) -> int:
        return _log2(self.d)

    @property
    def x_bits(self) -> int:
        return self.ns_iterations + 1

    def ns(self) -> int:
        """Newton–Schulz at frac 40: X(2I − MX)."""
        return 2 * FRAC_IN + self.x_bits + self.log_d + 3

    def first(self) -> int:
        """X·rhs at frac 80 (the unrefined solution, before clipping)."""
        return 2 * FRAC_IN + self.x_bits + RHS_BITS + self.log_d + 1

    def residual(self) -> int:
        """rhs − M·u₀ at frac 80, with |u₀| clipped to 2^(ADMM_BITS−1) and |M_ij| ≤ 1."""
        return 2 * FRAC_IN + ADMM_BITS + self.log_d + 2

    def polished(self) -> int:
        """u₀·2^56 + X·r at frac 96 (the refined solution, before masking and clipping)."""
        return FRAC_IN + FRAC_R + self.x_bits + ADMM_BITS + 2 * self.log_d + 2

    def products(self) -> int:
        """H·[z; δ] at frac 88 (|z| ≤ 2^8, |δ| ≤ 2^9)."""
        return FRAC_IN + FRAC_U + ADMM_BITS + self.log_d + 3

    def objective_change(self) -> int:
        """2·(F(polished) − F(z)) at frac 96."""
        return 2 * FRAC_U + 2 * ADMM_BITS + 2 * self.log_d + 6

    def sums(self) -> int:
        """λᵀ|u|, q′ᵀu (·2^8), uᵀg and ‖g‖² at frac 96 (|g| < 2^(ADMM_BITS + log d))."""
        return 2 * FRAC_U + 2 * ADMM_BITS + 3 * self.log_d + 3

    def certificate(self) -> int:
        """A certificate test value at frac 102: |coefficients| ≤ 2^CERT_SCALE times the sums."""
        return FRAC_S + CERT_SCALE + 2 * ADMM_BITS + 3 * self.log_d + 6

    def field_bits(self, kappa: int) -> int:
        """Smallest F_in (bits) in which every opening of the solver is statistically hiding."""
        plain = max(self.ns(), self.residual(), self.products(), self.sums()) + kappa + 3
        thresholds = max(
            threshold_field_bits(kappa, FRAC_IN, self.first() + 1),
            threshold_field_bits(kappa, FRAC_U, self.polished() + 1),
            threshold_field_bits(kappa, FRAC_U, self.objective_change() + 1),
            threshold_field_bits(kappa, FRAC_CERT, self.certificate() + 1),
        )
        return max(plain, thresholds)


def bounds(plan: SolverPlan) -> Bounds:
    return Bounds(plan.d, plan.ns_polish_iterations)


@dataclass(frozen=True)
class Params:
    """Per-problem constants (shares in F_in, frac 40; public constants are their own shares)."""

    gamma: ObjectArray  # (B, d): ridge shift of G_jj
    l1: ObjectArray  # (B, d): λ_j, or λ_j/e_j when ``l1_times_e``
    offdiag: ObjectArray | None  # (B,): factor 1/a on H's off-diagonal (standardised EN/ridge)
    w_scale: ObjectArray | None  # (B,): ŵ = w_scale·e∘u (standardised EN/ridge)
    start: npt.NDArray[np.float64]  # (B, d): public Newton start s ≤ 1/√G_jj
    clamp: ObjectArray | None = None  # (B, d): ``clamp_threshold`` of l1 (``l1_times_e`` only)


@dataclass(frozen=True)
class Fields:
    inp: FieldOps
    work: FieldOps


def clamp_threshold(l1_public: float, diag_shift: float) -> float:
    """The g below which λ = l1·e = l1/√g exceeds ρ·KAPPA_CLAMP, lowered by CLAMP_MARGIN and capped
    at 2(1 + γ) > g (a public constant per alpha; cross-validation combines them one-hot)."""
    return min((l1_public / (ADMM_RHO * KAPPA_CLAMP)) ** 2, 2 * (1 + diag_shift)) - CLAMP_MARGIN


def l1_max(plan: SolverPlan) -> float:
    """Public bound (≥ 1) on the L1 coefficients of every alpha."""
    return max([1.0, *(abs(v) for ap in plan.alphas for v in ap.l1_public)])


async def _together(*calls: Awaitable[ObjectArray]) -> list[ObjectArray]:
    """Run one-round operations in the same round (each draws its PRSS randomness before its one
    opening, so their order is fixed by the call order, as in a sequential program)."""
    return list(await asyncio.gather(*calls))


async def _newton_inverse_sqrt(ops: FieldOps, g: ObjectArray, y: ObjectArray, iterations: int) -> ObjectArray:
    """e ≈ 1/√g (frac 40) by y ← (3y − g·y·y²)/2 from shares y₀ with g·y₀² < 3 (``_banded_start``:
    [1/4, 1.2)); two rounds per step."""
    n = g.size
    for _ in range(iterations):
        both = await ops.mul(
            np.concatenate([g.ravel(), y.ravel()]),
            np.concatenate([y.ravel(), y.ravel()]),
            FRAC_IN,
            2 * FRAC_IN + 2 * E_BITS,
        )
        gy, yy = both[:n].reshape(g.shape), both[n:].reshape(g.shape)
        numerator = 3 * y * (1 << FRAC_IN) - gy * yy
        y = await ops.trunc(numerator % ops.p, FRAC_IN + 1, 2 * FRAC_IN + E_BITS + 3, degree2t=True)
    return y


def _band_count(start: npt.NDArray[np.float64]) -> int:
    """Half-octave bands of g·s² (even): START_BANDS, more when the start s is below 1."""
    extra = max(0, math.ceil(math.log2(float(np.max(1 / start**2)))))
    return 2 * math.ceil((START_BANDS + extra) / 2)


def _band_bits(start: npt.NDArray[np.float64]) -> int:
    """Bits of x = v·2^(2·FRAC_BAND) in the band comparison: |v| + κ ≤ 3/s² (g and thresholds ≤ 2/s²)."""
    return 2 * FRAC_BAND + math.ceil(math.log2(3 * float(np.max(1 / start**2)))) + 1


def _start_bits_needed(batch: int, d: int, start: npt.NDArray[np.float64], clamp: bool) -> int:
    """Random bits of ``_banded_start``."""
    size = batch * d * (_band_count(start) // 2 + (1 if clamp else 0))
    return _needed(size, FRAC_BAND, _band_bits(start))


async def _banded_start(
    ops: FieldOps, g: ObjectArray, params: Params, clamp: bool, supply: _BitSupply
) -> tuple[ObjectArray, ObjectArray | None]:
    """Newton's start y₀ ≤ 1/√g within a factor √2·(1 + 2^−22·…), and the clamp bits [λ_j > ρ·KAPPA_CLAMP].

    One fused threshold compares every g_jj with the public bands T_k = 2^(−k/2)/s² (k = 1 … K,
    two per comparison pair: below = [g < T_lo], above = [g > T_hi]) and, for the clamp, with
    ``params.clamp``. Its error is below 2^−25 in g, less than half the gap between two
    bands from k ≤ 22 on, so the bits met form a prefix 1 … K′ up to the band where g lies;
    y₀ = s·√2^K′ (a telescoping sum of the bits, local): w₀ = g·y₀² ∈ [1/4, 1.2) whenever
    g·s² ≥ 2^−(K+1), which the documented σ_j/h_j ≳ 2^−11 gives.
    """
    p = ops.p
    start = params.start
    batch, d = g.shape
    count = _band_count(start)
    inv = 1 / start**2
    levels = [inv * 2.0**-k for k in range(1, count + 1)]  # decreasing thresholds on g
    up = 1 << (2 * FRAC_BAND - FRAC_IN)
    xs, kappas = [], []
    for hi, lo in zip(levels[0::2], levels[1::2], strict=True):
        xs.append(((g - ops.fixed((hi + lo) / 2, FRAC_IN)) * up) % p)
        kappas.append(ops.fixed((hi - lo) / 2, FRAC_BAND))
    if clamp:
        assert params.clamp is not None, "the clamp needs its thresholds"
        xs.append(((g - params.clamp) * up) % p)
        kappas.append(np.zeros(g.shape, dtype=object))
    _, _, _, above, below = await _threshold(
        ops,
        np.concatenate([x.ravel() for x in xs]),
        np.concatenate([k.ravel() for k in kappas]),
        FRAC_BAND,
        _band_bits(start),
        supply,
    )
    pairs = count // 2
    above = above[: pairs * g.size].reshape(pairs, *g.shape)
    below_all = below
    below = below[: pairs * g.size].reshape(pairs, *g.shape)
    scale = float(1 << FRAC_IN)
    steps = [np.floor(start * 2.0 ** (k / 2) * scale) for k in range(count + 1)]
    y = np.vectorize(int, otypes=[object])(steps[0])
    for i in range(pairs):
        k_hi, k_lo = 2 * i + 1, 2 * i + 2
        inc_hi = np.vectorize(int, otypes=[object])(steps[k_hi] - steps[k_hi - 1])
        inc_lo = np.vectorize(int, otypes=[object])(steps[k_lo] - steps[k_lo - 1])
        y = y + (1 - above[i]) * inc_hi + below[i] * inc_lo  # [g < T_hi] = 1 − [g > T_hi]
    clamp_bits = below_all[pairs * g.size :].reshape(g.shape) if clamp else None
    return y % p, clamp_bits


def ns_steps(doublings: int) -> list[int]:
    """How ``_newton_schulz`` groups its doublings into self-correcting steps.

    A step of j doublings costs j + 1 rounds (the first step j), against 2j for plain
    Newton–Schulz; inside a step the rounding errors of the squarings double while R is
    close to 1, so the first step is capped at 16 doublings, later ones take 4 and the
    last two leave R small ([16, 4, 2] for 22 doublings, [7, 4, 2] for 13).
    """
    if doublings <= 3:
        return [doublings]
    if doublings <= 8:
        return [doublings - 2, 2]
    steps = [min(doublings - 6, 16)]
    rest = doublings - steps[0]
    while rest > 6:
        steps.append(4)
        rest -= 4
    return [*steps, rest - 2, 2] if rest > 2 else [*steps, rest]


async def _newton_schulz(
    ops: FieldOps,
    m: ObjectArray,
    iterations: int,
    trace_bound: float,
    frac: int,
    x_bits: int,
    step: StepCallback,
    *,
    unreduced: bool = False,
) -> tuple[ObjectArray, ObjectArray]:
    """(X ≈ M⁻¹, M) (batched (B, d, d), frac ``frac``): ``iterations`` Newton–Schulz doublings
    X ← X(2I − MX) from X₀ = c·I, c = 1/trace_bound, in the product form.

    With R = I − MX, M⁻¹ = X(I + R)(I + R²)(I + R⁴)…, so a step of j doublings computes
    X(I + R^(2^i)) and R^(2^(i+1)) side by side, one round each, and the next step
    recomputes R = I − MX exactly from its X (self-correcting, as Newton–Schulz); the
    steps are ``ns_steps``. In exact arithmetic the result is the k-th Newton–Schulz
    iterate: a polynomial in M with MX_k's eigenvalues in [0, 1] and X_k ≤ 2^k/trace_bound
    (``x_bits`` bounds it). The first round makes X₁ = 2c·I − c²·M and R₀ = I − c·M; when M
    is given as an unreduced local product (degree 2t, ``unreduced``) its degree reduction
    shares that round.
    """
    p, d = ops.p, m.shape[-1]
    log_d = math.ceil(math.log2(d))
    eye = np.zeros((d, d), dtype=object)
    eye[np.diag_indices(d)] = 1 << frac
    c = 1 / trace_bound
    scaled = np.concatenate([(m * ops.fixed(c, frac)).ravel(), (m * ops.fixed(c * c, frac)).ravel()]) % p
    first = ops.trunc(scaled, frac, 2 * frac + 3, degree2t=unreduced)
    if unreduced:
        m, both = await _together(ops.reduce(m), first)
    else:
        both = await first
    cm, c2m = _split(both, m.shape, m.shape)
    r = (eye - cm) % p  # R₀ = I − cM (its eigenvalues are in [0, 1))
    x = (np.broadcast_to(ops.fixed(2 * c * np.eye(d), frac), m.shape) - c2m) % p  # X₁ = c(I + R₀)
    step(1)
    square_bits = 2 * frac + log_d + 3
    product_bits = 2 * frac + x_bits + log_d + 3
    for index, doublings in enumerate(ns_steps(iterations)):
        done = 1 if index == 0 else 0
        if index > 0:
            r = (eye - await ops.matmul(m, x, frac, square_bits)) % p
        elif doublings > 1:
            r = await ops.matmul(r, r, frac, square_bits)  # R₀², for X₁'s next doubling
        while done < doublings:
            last = done == doublings - 1
            update = np.matmul(x, (eye + r) % p)
            if last:
                x = await ops.trunc(update % p, frac, product_bits, degree2t=True)
            else:
                both = await ops.trunc(
                    np.concatenate([update.ravel(), np.matmul(r, r).ravel()]) % p, frac, product_bits, degree2t=True
                )
                x, r = _split(both, m.shape, m.shape)
            done += 1
            step(1)
    return x, m


@dataclass(frozen=True)
class Fit:
    """Shares in F_in: ŵ = e∘u (B, d) frac 40 (rounded), u (B, d) frac 48, e (B, d) frac 40.

    u is exactly 0 off the support, so the revealed e∘u (opened unrounded, at
    frac 88) keeps exact zeros. ``iterations`` (ADMM iterations used) and
    ``certified`` (every fit of the batch passed the certificate) are public.
    """

    w_hat: ObjectArray
    u: ObjectArray
    e: ObjectArray
    iterations: int
    certified: bool


async def _prepare(
    fields: Fields,
    cov: ObjectArray,
    params: Params,
    plan: SolverPlan,
    l1_times_e: bool,
    l1_max: float,
    step: StepCallback,
) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
    """Jacobi scaling inside MPC: (e, H, q′, λ) in F_in at frac 40 (λ clamped to ρ·KAPPA_CLAMP)."""
    ops, d = fields.inp, plan.d
    cxx, cxy = cov[:, :d, :d], cov[:, :d, d]
    diag = np.einsum("bii->bi", cxx)
    g = (diag + params.gamma) % ops.p
    batch = g.shape[0]
    supply = _BitSupply(await ops.random_bits(_start_bits_needed(batch, d, params.start, l1_times_e)))
    y0, clamp = await _banded_start(ops, g, params, l1_times_e, supply)
    e = await _newton_inverse_sqrt(ops, g, y0, START_NEWTON)
    step(NEWTON_ITERATIONS)
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
    if clamp is None:
        h = await ops.mul(outer, gmat, FRAC_IN, 2 * FRAC_IN + 3)
    else:  # λ = l1∘e, or ρ·KAPPA_CLAMP where the bands said it is larger (exact product, same round as H)
        limit = ops.fixed(np.full(lam.shape, ADMM_RHO * KAPPA_CLAMP), FRAC_IN)
        h, cut = await _together(
            ops.mul(outer, gmat, FRAC_IN, 2 * FRAC_IN + 3), ops.mul_exact(clamp, (limit - lam) % ops.p)
        )
        lam = (lam + cut) % ops.p
    if params.offdiag is not None and params.w_scale is not None:  # standardised EN/ridge: e = e₀/√a
        factor = np.broadcast_to(params.offdiag[:, None, None], h.shape).copy()
        factor[:, np.arange(d), np.arange(d)] = 1 << FRAC_IN
        scaled = await ops.mul(
            np.concatenate([h.ravel(), q.ravel()]),
            np.concatenate([factor.ravel(), np.broadcast_to(params.w_scale[:, None], q.shape).ravel()]),
            FRAC_IN,
            2 * FRAC_IN + 3,
        )
        h, q = scaled[: h.size].reshape(h.shape), scaled[h.size :].reshape(q.shape)
    return e, h, q, lam


def _split(values: ObjectArray, *shapes: tuple[int, ...]) -> list[ObjectArray]:
    """Cut a flat array into consecutive pieces of the given shapes."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(values[start : start + size].reshape(shape))
        start += size
    return out


class _BitSupply:
    """Random bits for several one-off thresholds, made in one round."""

    def __init__(self, bits: ObjectArray) -> None:
        self._bits = bits

    def take(self, count: int) -> ObjectArray:
        out, self._bits = self._bits[:count], self._bits[count:]
        return out


def _needed(size: int, frac: int, bits: int) -> int:
    """Random bits of ``_threshold`` on ``size`` values (``bits`` as passed to it)."""
    return threshold_bits_needed(size, frac, bits + 1)


async def _threshold(
    ops: FieldOps, x: ObjectArray, kappa: ObjectArray, frac: int, bits: int, supply: _BitSupply
) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
    """One fused threshold step on x = v·2^(2·frac) (degree 2t, |x| < 2^(bits−1)), κ ≥ 0 of x's shape:
    (v, S_κ(v), |S_κ(v)|, [v > κ], [v < −κ]). One spare bit keeps |v| + κ inside the comparison."""
    fused = FusedThreshold(ops, kappa, frac, bits + 1, 0)
    return await fused.step(x, supply.take(_needed(x.size, frac, bits)))


class _Admm:
    """Over-relaxed ADMM in F_w (frac 32), run in segments and restartable.

    With K = (H + ρI)⁻¹, ρ = 1/16, r = 7/4 (dyadic, so public factors are exact):
    v = r·Kq′ + rρ·K(z − w) + (1 − r)z + w, z ← S_κ(v), w ← v − z. The local
    product gives v·2^64 of degree 2t; ``FusedThreshold`` truncates and
    soft-thresholds it in 7 rounds.
    """

    def __init__(self, ops: FieldOps, a1: ObjectArray, c1: ObjectArray, kappa: ObjectArray) -> None:
        self.ops, self.a1, self.c1, self.kappa = ops, a1, c1, kappa
        self.z = np.zeros(c1.shape, dtype=object)
        self.w = np.zeros(c1.shape, dtype=object)

    @classmethod
    async def create(
        cls, ops: FieldOps, h: ObjectArray, q: ObjectArray, kappa: ObjectArray, plan: SolverPlan, step: StepCallback
    ) -> _Admm:
        p, d = ops.p, plan.d
        shifted = h.copy()
        diagonal = (np.arange(d), np.arange(d))
        shifted[:, diagonal[0], diagonal[1]] = (shifted[:, diagonal[0], diagonal[1]] + ops.fixed(ADMM_RHO, FRAC_W)) % p
        k_bits = _log2(1 / ADMM_RHO) + 1  # ‖K‖ ≤ 1/ρ
        k, _ = await _newton_schulz(ops, shifted, plan.ns_k_iterations, d + ADMM_RHO, FRAC_W, k_bits, step)
        (num_a, shift_a), (num_c, shift_c) = _RHO_RELAX, _RELAX
        kq = np.einsum("bij,bj->bi", k, q)
        a1, c1 = await _together(
            ops.trunc((num_a * k) % p, shift_a, FRAC_W + _log2(abs(num_a)) + k_bits + 2),  # rρ·K
            ops.trunc(
                (num_c * kq) % p,
                FRAC_W + shift_c,
                2 * FRAC_W + _log2(abs(num_c)) + k_bits + _log2(d) + 2,
                degree2t=True,
            ),  # r·Kq′
        )
        return cls(ops, a1, c1, kappa)

    def premade_bits(self, steps: int) -> int:
        """Random bits for the first steps of a segment of ``steps``, made ahead in another round."""
        per_step = threshold_bits_needed(self.kappa.size, FRAC_W, ADMM_X_BITS)
        return per_step * min(steps, max(1, MAX_BITS_PER_BATCH // per_step))

    async def run(
        self, steps: int, step: StepCallback, premade: ObjectArray | None = None
    ) -> tuple[ObjectArray, ObjectArray, ObjectArray, ObjectArray]:
        """``steps`` iterations: z, |z| and the threshold bits of the last one (``premade``: the
        random bits of the first steps, from ``premade_bits``)."""
        p = self.ops.p
        num_z, shift_z = _ONE_MINUS_RELAX
        per_step = threshold_bits_needed(self.kappa.size, FRAC_W, ADMM_X_BITS)
        ready = 0 if premade is None else premade.size // per_step
        threshold = FusedThreshold(self.ops, self.kappa, FRAC_W, ADMM_X_BITS, steps - ready)
        z, w = self.z, self.w
        out: tuple[ObjectArray, ...] = ()
        for i in range(steps):
            local = (
                np.einsum("bij,bj->bi", self.a1, (z - w) % p)
                + num_z * z * (1 << (FRAC_W - shift_z))
                + (self.c1 + w) * (1 << FRAC_W)
            )
            supplied = premade[i * per_step : (i + 1) * per_step] if premade is not None and i < ready else None
            v, z, z_abs, above, below = await threshold.step(local % p, supplied)
            w = (v - z) % p
            out = (z, z_abs, above, below)
            step(1)
        self.z, self.w = z, w
        return out  # type: ignore[return-value]

    def restart(self, z: ObjectArray, w: ObjectArray) -> None:
        self.z, self.w = z, w


async def _polish(
    ops: FieldOps,
    h: ObjectArray,
    q: ObjectArray,
    lam: ObjectArray,
    bits: tuple[ObjectArray, ObjectArray] | None,
    plan: SolverPlan,
    supply: _BitSupply,
    step: StepCallback,
) -> tuple[ObjectArray, ObjectArray]:
    """(u, |u|) at frac 48: H_SS u_S = q′_S − λ_S s_S on the support S of z (all features for ridge).

    M = (aaᵀ)∘H + diag(1 − a) has unit diagonal, so Newton–Schulz starts at I/d
    (frac 40). u₀ = X·rhs is clipped to ±2^(ADMM_BITS−1) (a wrong support can make
    it huge), then refined once: u = u₀ + X·(rhs − M u₀), with the residual at
    frac 56. The last threshold truncates to frac 48, zeroes everything off the
    support exactly (κ = 2^8 there: the noise of the solve is far below) and
    clips to ±2^8: u = S_{(1−a)·2^8}(v) − S_{2^8}(v).
    """
    p, d, f = ops.p, plan.d, FRAC_IN
    b = bounds(plan)
    batch = q.shape[0]
    if bits is None:
        a = np.ones(q.shape, dtype=object)
        x, m = await _newton_schulz(ops, h, plan.ns_polish_iterations, float(d), f, b.x_bits, step)
        rhs = q
    else:
        # a∘(q − λ∘s) = a∘q − λ∘s: the bits above and below are never both 1, so a∘s = s.
        above, below = bits
        a, s = (above + below) % p, (above - below) % p
        pair = await ops.mul_exact(
            np.concatenate([np.broadcast_to(a[:, :, None], (batch, d, d)).ravel(), a.ravel(), lam.ravel()]),
            np.concatenate([np.broadcast_to(a[:, None, :], (batch, d, d)).ravel(), q.ravel(), s.ravel()]),
        )
        aa, aq, ls = _split(pair, (batch, d, d), (batch, d), (batch, d))
        rhs = (aq - ls) % p
        m = aa * h  # degree 2t, reduced in the Newton–Schulz iteration's first round
        m[:, np.arange(d), np.arange(d)] = (m[:, np.arange(d), np.arange(d)] + (1 - a) * (1 << f)) % p
        x, m = await _newton_schulz(ops, m % p, plan.ns_polish_iterations, float(d), f, b.x_bits, step, unreduced=True)
    first = np.einsum("bij,bj->bi", x, rhs) % p  # u₀·2^80, degree 2t
    bound_40 = ops.fixed(np.full(q.shape, 2.0 ** (ADMM_BITS - 1)), f)
    v, excess, _, _, _ = await _threshold(ops, first, bound_40, f, b.first(), supply)
    u0 = (v - excess) % p  # clipped, frac 40
    residual = (rhs * (1 << f) - np.einsum("bij,bj->bi", m, u0)) % p
    residual = await ops.trunc(residual, 2 * f - FRAC_R, b.residual(), degree2t=True)  # frac 56
    refined = (u0 * (1 << FRAC_R) + np.einsum("bij,bj->bi", x, residual)) % p  # u·2^96, degree 2t
    bound_48 = ops.fixed(np.full(q.shape, 2.0 ** (ADMM_BITS - 1)), FRAC_U)
    mask = ((1 - a) * bound_48) % p
    _, cut, cut_abs, _, _ = await _threshold(
        ops, np.concatenate([refined, refined]), np.concatenate([mask, bound_48]), FRAC_U, b.polished(), supply
    )
    return (cut[:batch] - cut[batch:]) % p, (cut_abs[:batch] - cut_abs[batch:]) % p


async def _gradient(ops: FieldOps, h: ObjectArray, q: ObjectArray, points: ObjectArray, b: Bounds) -> ObjectArray:
    """H·points − q′ at frac 48 for (B, n, d) points at frac 48 (one round)."""
    products = await ops.matmul(points, np.swapaxes(h, 1, 2), FRAC_IN, b.products())
    return (products - q[:, None, :] * (1 << (FRAC_U - FRAC_IN))) % ops.p


def _integer(value: Fraction) -> int:
    if value.denominator != 1:
        raise ValueError("certificate coefficients must be integers after scaling")
    return int(value)


@dataclass(frozen=True)
class _Test:
    """One certificate test of a fit: the dual bounds of |g_j| and the integer coefficients of
    t = c_s1·S1 + c_s2·S2 + c_s3·S3 + c_yy·Ĉ_yy + c_abs·Σ|u| + constant (all at frac 102),
    certified when every |g_j| ≤ bound_j and t < 0."""

    s1: int
    s2: int
    s3: int
    yy: int
    abs_u: int
    constant: int


def _lasso_tests() -> list[_Test]:
    """Per slack η: t = gap_η − τ·P with sound margins (see ``plan``).

    gap_η ≤ S1 + (1 − η)S2 + η²P, so t′ = S1 + (1 − η)S2 − (tol − η²)·P ≤ 0 implies
    gap_η ≤ tol·P; η² is rounded up to a multiple of 2^−41 (``plan.gap_tolerance``).
    The gradient used in S2 (truncated, ≤ E = 4·2^−48 off per entry) moves S2 by
    ≤ E·Σ|u|; the truncated sums are within 2 ulps at frac 60.
    """
    scale = Fraction(2) ** (FRAC_S + CERT_SCALE)
    error = Fraction(GRADIENT_ERROR_ULPS, 2**FRAC_U)
    tests = []
    assert SLACK_SQUARE_GRAIN >= 2.0 ** (1 - CERT_SCALE), "τ/2 must be a whole number of 2^−42"
    for eta in DUAL_SLACKS:
        tau = Fraction(gap_tolerance(eta))
        coefficients = [1 - tau, 1 - Fraction(eta) - tau / 2, tau / 2, -tau / 2]
        s1, s2, s3, yy = (_integer(c * 2**CERT_SCALE) for c in coefficients)
        abs_u = _integer(error * scale / 2**FRAC_U)
        margin = _integer(Fraction(8, 2**FRAC_S) * scale)
        tests.append(_Test(s1, s2, s3, yy, abs_u, margin))
    return tests


def _ridge_test(plan: SolverPlan) -> _Test:
    """Ridge: |g_j| ≤ ε for every j and P ≥ P_min = d·ε²/(2μ·tol) give ‖g‖²/(2μ) ≤ tol·P.

    t = P_min − P_lower with P_lower = ½(Ĉ_yy − S3 + S2 − E·Σ|u|) minus the truncation margin.
    """
    scale = Fraction(2) ** (FRAC_S + CERT_SCALE)
    error = Fraction(GRADIENT_ERROR_ULPS, 2**FRAC_U)
    eps = Fraction(RIDGE_GRADIENT_BOUND)
    p_min = plan.d * eps**2 / (2 * Fraction(plan.strong_convexity) * Fraction(CERTIFICATE_TOLERANCE))
    half = Fraction(1, 2)
    test = _Test(
        0,
        _integer(-half * 2**CERT_SCALE),
        _integer(half * 2**CERT_SCALE),
        _integer(-half * 2**CERT_SCALE),
        _integer(half * error * scale / 2**FRAC_U),
        math.ceil(p_min * scale) + _integer(Fraction(8, 2**FRAC_S) * scale),
    )
    return test


async def _dual_bounds(ops: FieldOps, lam: ObjectArray, plan: SolverPlan) -> tuple[ObjectArray, ObjectArray | None]:
    """Per test, the bound on every |g_j| at frac 51, below its exact value by the rounding;
    lasso: (1 + η)λ, and (1 + η₀)λ at frac 32 to clip the restart's dual."""
    p = ops.p
    # The threshold sees the exact g within [−1, 2) ulp, and the bound is rounded within [−1, 2).
    margin = 3
    if not plan.has_l1:
        return (ops.fixed(np.full((1, *lam.shape), RIDGE_GRADIENT_BOUND), FRAC_CERT) - margin) % p, None
    shift = 37  # (1 + η)·λ·2^(51 + 37) for η ≥ 2^−29, and at frac 32, exact before one truncation
    pieces = []
    for eta in DUAL_SLACKS:
        numerator, log_denominator = _dyadic(1 + Fraction(eta))
        pieces.append(lam * numerator * (1 << (FRAC_CERT - FRAC_IN + shift - log_denominator)))
    first_num, first_log = _dyadic(1 + Fraction(DUAL_SLACKS[0]))
    pieces.append(lam * first_num * (1 << (FRAC_W - FRAC_IN + shift - first_log)))
    bits = FRAC_CERT + shift + 3 + 2  # |(1 + η)λ| ≤ 2·4 at frac 51, shifted up
    scaled = await ops.trunc(np.concatenate([x.ravel() for x in pieces]) % p, shift, bits)
    levels = len(DUAL_SLACKS)
    bounds_cert = scaled[: levels * lam.size].reshape(levels, *lam.shape)
    clip = scaled[levels * lam.size :].reshape(lam.shape)
    return (bounds_cert - margin) % p, clip


@dataclass(frozen=True)
class _Outcome:
    """A checkpoint's result: the public bit, the point to return (frac 48) and ADMM's next state."""

    certified: bool
    u: ObjectArray
    u_abs: ObjectArray
    restart: tuple[ObjectArray, ObjectArray] | None  # (z, w) at frac 32


def _check_values(batch: int, d: int, levels: int, has_l1: bool) -> int:
    """Values compared in a check's one fused threshold: every |g_j| and every test per fit, and
    (lasso) the objective change."""
    return levels * batch * (d + 1) + (batch if has_l1 else 0)


def _check_bits(plan: SolverPlan, batch: int, levels: int) -> int:
    """Random bits of one check (polish, then certificate and selection)."""
    b, d = bounds(plan), plan.d
    polish = _needed(batch * d, FRAC_IN, b.first()) + _needed(2 * batch * d, FRAC_U, b.polished())
    return polish + _needed(_check_values(batch, d, levels, plan.has_l1), FRAC_CERT, b.certificate())


async def _check(
    ops: FieldOps,
    h: ObjectArray,
    q: ObjectArray,
    lam: ObjectArray,
    cyy: ObjectArray,
    polished: ObjectArray,
    polished_abs: ObjectArray,
    admm: tuple[ObjectArray, ObjectArray, ObjectArray] | None,
    dual: ObjectArray,
    clip: ObjectArray | None,
    plan: SolverPlan,
    supply: _BitSupply,
) -> _Outcome:
    """The certificate of the polished points (one opened bit: all of the batch certified) and,
    for lasso, the choice between them and ADMM's z, from which ADMM goes on.

    Rounds: the gradients H·z and H·δ (δ = polished − z); the sums S1 = λᵀ|u|, S2 = uᵀg,
    S3 = q′ᵀu of the polished u to frac 60 (and u, g to frac 32 for a restart); one fused
    threshold compares every |g_j| (the exact Hu − q′, unrounded) with its bound and every test
    value with 0, for every test, and the objective change 2(F(u) − F(z)) with 0; per fit and
    test, fail = (violated bounds) + [t ≥ 0] is zero iff that test passes; two rounds of
    products (the tree over the tests, the clipping of g and the selection); a random multiple
    of Σ_fits Π_tests fail is opened: 0 exactly when every fit is certified, else uniform.

    ``admm`` = (z, |z|, w) at frac 32 (lasso). When the polished point is better it restarts
    ADMM at z = u, w = −clip(g, ±(1 + η₀)λ)/ρ; otherwise ADMM keeps its own state.
    """
    p, b = ops.p, bounds(plan)
    batch, d = q.shape
    tests = _lasso_tests() if plan.has_l1 else [_ridge_test(plan)]
    levels = len(tests)
    up = 1 << (FRAC_U - FRAC_W)
    if admm is not None:
        z, z_abs, w = admm
        z48 = (z * up) % p
        delta = (polished - z48) % p
        grads = await _gradient(ops, h, q, np.stack([z48, delta], axis=1), b)
        g_z = grads[:, 0]
        h_delta = (grads[:, 1] + q * (1 << (FRAC_U - FRAC_IN))) % p  # Hδ (the gradient added −q′)
        g = (g_z + h_delta) % p
    else:
        g = (await _gradient(ops, h, q, polished[:, None, :], b))[:, 0]
    to_w = 1 << (FRAC_W + 2 * FRAC_U - FRAC_S - FRAC_U)  # frac 48 → frac 32 after the cut
    sums = (
        np.concatenate(
            [
                (lam * polished_abs).sum(axis=1) * (1 << (FRAC_U - FRAC_IN)),
                (polished * g).sum(axis=1),
                (q * polished).sum(axis=1) * (1 << (FRAC_U - FRAC_IN)),
                (polished * to_w).ravel(),
                (g * to_w).ravel(),
            ]
        )
        % p
    )
    cut = await ops.trunc(sums, 2 * FRAC_U - FRAC_S, b.sums(), degree2t=True)
    s1, s2, s3, u32, g32 = _split(cut, (batch,), (batch,), (batch,), (batch, d), (batch, d))
    yy = cyy * (1 << (FRAC_S - FRAC_IN))
    abs_total = polished_abs.sum(axis=1)
    values = [(t.s1 * s1 + t.s2 * s2 + t.s3 * s3 + t.yy * yy + t.abs_u * abs_total + t.constant) % p for t in tests]
    exact_g = (np.einsum("bij,bj->bi", h, polished) - q * (1 << FRAC_U)) % p  # frac 88, degree 2t, unrounded
    x_parts = [
        np.broadcast_to((exact_g * (1 << (2 * FRAC_CERT - FRAC_IN - FRAC_U))) % p, (levels, batch, d)).ravel(),
        *values,
    ]
    kappa_parts = [dual.ravel(), np.full(levels * batch, 2, dtype=object)]
    if admm is not None:
        l1_change = lam * (polished_abs - (z_abs * up) % p) * (1 << (FRAC_U - FRAC_IN))  # frac 96
        twice = (2 * delta * g_z + delta * h_delta + 2 * l1_change).sum(axis=1)  # 2(F(u) − F(z)), frac 96
        x_parts.append((twice * (1 << (2 * FRAC_CERT - 2 * FRAC_U))) % p)
        kappa_parts.append(np.zeros(batch, dtype=object))
    _, _, _, above, below = await _threshold(
        ops, np.concatenate(x_parts), np.concatenate(kappa_parts), FRAC_CERT, b.certificate(), supply
    )
    n = levels * batch * d
    violated = (above[:n] + below[:n]).reshape(levels, batch, d).sum(axis=2)
    factors = list((violated + 1 - below[n : n + levels * batch].reshape(levels, batch)) % p)  # 0 iff the test passes
    # Round A: the tree's first level; the clipped gradient (with the first test's bits).
    extra: list[ObjectArray] = []
    if clip is not None:
        extra = [above[: batch * d] * (g32 - clip).ravel(), below[: batch * d] * (g32 + clip).ravel()]
    w_polished = None
    if len(factors) > 1 or extra:
        pairs = [factors[i] * factors[i + 1] for i in range(0, len(factors) - 1, 2)]
        reduced = await ops.reduce(np.concatenate([*pairs, *extra]) % p)
        factors = _split(reduced, *[(batch,)] * len(pairs)) + factors[len(pairs) * 2 :]
        if extra:
            above_part, below_part = _split(reduced[len(pairs) * batch :], (batch, d), (batch, d))
            w_polished = (-(g32 - above_part - below_part) * _INV_RHO[0]) % p
    # Round B: the rest of the tree; the selection (better = [F(u) < F(z)]).
    chosen = polished, polished_abs
    restart = None
    pairs = [factors[i] * factors[i + 1] for i in range(0, len(factors) - 1, 2)]
    moves: list[ObjectArray] = []
    if admm is not None:
        assert w_polished is not None
        better = np.broadcast_to(below[n + levels * batch :][:, None], (batch, d)).ravel()
        moves = [
            better * x.ravel()
            for x in (delta, (polished_abs - (z_abs * up) % p) % p, (u32 - z) % p, (w_polished - w) % p)
        ]
    if pairs or moves:
        reduced = await ops.reduce(np.concatenate([*pairs, *moves]) % p)
        factors = _split(reduced, *[(batch,)] * len(pairs)) + factors[len(pairs) * 2 :]
        if moves:
            d_u, d_abs, d_z, d_w = _split(reduced[len(pairs) * batch :], *[(batch, d)] * 4)
            chosen = ((z48 + d_u) % p, ((z_abs * up) + d_abs) % p)
            restart = ((z + d_z) % p, (w + d_w) % p)
    while len(factors) > 1:  # more than four tests
        pairs = [factors[i] * factors[i + 1] for i in range(0, len(factors) - 1, 2)]
        reduced = await ops.reduce(np.concatenate(pairs) % p)
        factors = _split(reduced, *[(batch,)] * len(pairs)) + factors[len(pairs) * 2 :]
    total = np.array([factors[0].sum() % p], dtype=object)
    mask = ops._prss(1, p)
    opened = await ops._open((mask * total + ops._prss_zero(1)) % p, 2 * ops.t)
    assert opened is not None
    certified = bool(opened[0] == 0)
    if certified:
        return _Outcome(True, polished, polished_abs, None)
    return _Outcome(False, *chosen, restart)


async def _trunc_convert(src: FieldOps, dst: FieldOps, x: ObjectArray, frac: int, bits: int) -> ObjectArray:
    """Shares in ``dst``'s field of ≈ x/2^frac for signed |x| < 2^(bits−1) (degree t in ``src``): a
    truncation whose high mask r_hi is shared in both fields (as ``FieldOps.convert``'s), one opening."""
    src._check_bits(bits)
    dst._check_bits(bits - frac)
    n = x.size
    uci = src.mpc._prss_uci()
    hi_bound = 1 << (src.kappa + bits - frac)
    r_hi_src = src._prss(n, hi_bound, uci)
    r_hi_dst = dst._prss(n, hi_bound, uci)
    r_lo = src._prss(n, 1 << frac)
    c = await src._open((x.ravel() + (1 << (bits - 1)) + r_lo + (r_hi_src << frac)) % src.p, src.t)
    assert c is not None
    bias = (src.subsets - 1) // 2 + (1 << (bits - 1 - frac))
    return (((c >> frac) - r_hi_dst - bias) % dst.p).reshape(x.shape)


async def fit_batch(
    fields: Fields,
    cov: ObjectArray,
    params: Params,
    plan: SolverPlan,
    l1_times_e: bool,
    step: StepCallback,
) -> Fit:
    """B independent fits (one per covariance in ``cov``) in one batch of rounds, run until the
    certificate holds for all of them at a checkpoint, or to the plan's maximum."""
    inp, work = fields.inp, fields.work
    e, h, q, lam = await _prepare(fields, cov, params, plan, l1_times_e, l1_max(plan), step)
    batch, d = q.shape
    cyy = cov[:, d, d]
    levels = len(DUAL_SLACKS) if plan.has_l1 else 1
    check_bits = _check_bits(plan, batch, levels)
    if not plan.has_l1:  # ridge: the refined solve with every feature active, then the certificate
        (dual, clip), made = await asyncio.gather(_dual_bounds(inp, lam, plan), inp.random_bits(check_bits))
        supply = _BitSupply(made)
        u, u_abs = await _polish(inp, h, q, lam, None, plan, supply, step)
        outcome = await _check(inp, h, q, lam, cyy, u, u_abs, None, dual, None, plan, supply)
        done = 0
    else:
        # One round: the dual bounds, H, q′ and κ = λ/ρ truncated to frac 32 straight into F_w, and
        # the random bits of the first ADMM segment.
        num_k, shift_k = _INV_RHO
        assert shift_k == 0, "1/ρ must be an integer"
        first = plan.checkpoints[0]
        segment_bits = threshold_bits_needed(batch * d, FRAC_W, ADMM_X_BITS) * min(
            first, max(1, MAX_BITS_PER_BATCH // threshold_bits_needed(batch * d, FRAC_W, ADMM_X_BITS))
        )
        (dual, clip), moved, premade = await asyncio.gather(
            _dual_bounds(inp, lam, plan),
            _trunc_convert(
                inp, work, np.concatenate([h.ravel(), q.ravel(), (num_k * lam).ravel()]), FRAC_IN - FRAC_W, FRAC_IN + 11
            ),
            work.random_bits(segment_bits),
        )
        h_w, q_w, kappa_w = _split(moved, h.shape, q.shape, lam.shape)
        admm = await _Admm.create(work, h_w, q_w, kappa_w, plan, step)
        done = 0
        for mark in plan.checkpoints:
            z, z_abs, above, below = await admm.run(mark - done, step, premade)
            done = mark
            back, made = await _together(
                work.convert(
                    np.concatenate([x.ravel() for x in (z, z_abs, above, below, admm.w)]), inp, FRAC_W + ADMM_BITS + 1
                ),
                inp.random_bits(check_bits),
            )
            z, z_abs, above, below, w = _split(back, *[z.shape] * 5)
            supply = _BitSupply(made)
            polished, polished_abs = await _polish(inp, h, q, lam, (above, below), plan, supply, step)
            outcome = await _check(inp, h, q, lam, cyy, polished, polished_abs, (z, z_abs, w), dual, clip, plan, supply)
            if outcome.certified or mark == plan.checkpoints[-1]:
                break
            assert outcome.restart is not None
            z_next, w_next = outcome.restart
            following = plan.checkpoints[plan.checkpoints.index(mark) + 1] - mark
            moved, premade = await _together(
                inp.convert(np.concatenate([z_next.ravel(), w_next.ravel()]), work, FRAC_W + 2 * ADMM_BITS),
                work.random_bits(admm.premade_bits(following)),
            )
            admm.restart(*_split(moved, z_next.shape, w_next.shape))
    u = outcome.u
    if params.w_scale is not None:
        e = await inp.mul(e, params.w_scale[:, None], FRAC_IN, 2 * FRAC_IN + E_BITS + 2)
    w_hat = await inp.mul(e, u, FRAC_U, FRAC_IN + FRAC_U + E_BITS + ADMM_BITS + 2)
    return Fit(w_hat, u, e, done, outcome.certified)
