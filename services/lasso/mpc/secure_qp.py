"""The penalised quadratic models of the GLMs' proximal Newton steps (MPyC, one field).

Each outer iteration of ``secure_glm`` solves, in Jacobi-scaled coordinates u,

    min_u F(u) = ½·uᵀHu − qᵀu + Σ_j λ_j·|u_j|          (λ = 0 for the intercept)

with shares of H ((d+1) × (d+1)), q and λ at ``frac`` fractional bits. The steps are the
lasso's (``secure_solver``, ADR 0002), for one problem and warm-started:

* ``admm``: over-relaxed ADMM (ρ = 1/4, r = 7/4) from z₀ = the previous outer iterate and
  the dual that makes it a fixed point of the old model, w₀ = (q − Hz₀)/ρ; K = (H + ρI)⁻¹ by
  Newton–Schulz; one local matrix-vector product and one ``FusedThreshold`` step (6
  rounds at 20 fractional bits) per iteration. Hz₀ and the threshold's random bits are made
  while Newton–Schulz runs, and its last truncation gives rρ·K: the steps follow at once.
* ``polish`` then ``select`` (``polish_and_select``: both on z): Newton–Schulz on a support
  and signs (``secure_glm``: the previous outer iteration's ADMM iterate, so that ``polish``
  runs beside ADMM), the solution clipped, then a secure comparison of F keeps the better of
  it and the ADMM point. The comparisons are ``secure_compare``'s, their random bits made
  during Newton–Schulz (``FieldOps.pair_bits``); F's difference is compared unreduced, in one
  batch with a stopping rule's step comparisons for both candidates (the chosen one's count is
  selected with the point): ``select`` takes 10 rounds, and the rule's opened bit one more.
* ``solve``: Newton–Schulz on H alone (no L1 part: one Newton step).

Bounds (documented in services/lasso/REGRESSION.md): |ADMM values| < 2^(ADMM_BITS − 1),
thresholds clamped to ρ·KAPPA_CLAMP, H with diagonal ≤ 1 and λ_min ≥ ``EIGENVALUE_FLOOR``.
This module never imports the lasso solver's internals: the other solver may change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import ADMM_RELAX, ADMM_RHO
from services.lasso.mpc.secure_compare import compare_field_bits, comparison_bits, less_than_zero
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_threshold import (
    MAX_BITS_PER_BATCH,
    FusedThreshold,
    threshold_bits_needed,
    threshold_field_bits,
)

ObjectArray = npt.NDArray[np.object_]

#: |u|, |v|, |w| in ADMM < 2^(ADMM_BITS − 1).
ADMM_BITS = 9
#: Thresholds κ = λ/ρ are clamped to this (a coefficient with a larger κ is 0 unless a
#: gradient entry exceeds ρ·KAPPA_CLAMP = 16).
KAPPA_CLAMP = 64.0
#: |e_j| < 2^(E_BITS − 1) (Newton for 1/√G from a start ≤ 1 grows at most 1.5× a step).
E_BITS = 17


def admm_field_bits(kappa: int, frac: int) -> int:
    """Prime size ``admm`` needs at ``frac`` fractional bits (the lasso's F_w: 128 bits at frac 32)."""
    return threshold_field_bits(kappa, frac, 2 * frac + ADMM_BITS + 1)


def qp_field_bits(kappa: int, frac: int, d1: int, solve_iterations: int) -> int:
    """Prime size the other steps of this module need at ``frac`` fractional bits."""
    log_d = math.ceil(math.log2(d1 + 1))
    solve = 2 * frac + solve_iterations + 1 + log_d + 12
    newton = 2 * frac + 2 * E_BITS + 2
    return max(max(solve, newton) + kappa + 3, compare_field_bits(kappa, max(_select_bits(frac, solve_iterations, d1))))


@dataclass(frozen=True)
class Model:
    """One quadratic model (shares at ``frac``): F(u) = ½uᵀHu − qᵀu + Σλ|u|."""

    h: ObjectArray  # (d1, d1)
    q: ObjectArray  # (d1,)
    lam: ObjectArray  # (d1,), clamped to ρ·KAPPA_CLAMP, 0 for the intercept


@dataclass(frozen=True)
class AdmmState:
    """The last ADMM iterate z, |z| and its threshold bits [v > κ], [v < −κ] (frac ``frac``)."""

    z: ObjectArray
    z_abs: ObjectArray
    above: ObjectArray
    below: ObjectArray


def _dyadic(value: float) -> tuple[int, int]:
    """(numerator, shift) of a dyadic rational."""
    numerator, denominator = value.as_integer_ratio()
    if denominator & (denominator - 1):
        raise ValueError("ADMM constants must be dyadic rationals")
    return numerator, denominator.bit_length() - 1


async def newton_inverse_sqrt(
    ops: FieldOps, g: ObjectArray, start: npt.ArrayLike, frac: int, iterations: int
) -> ObjectArray:
    """e ≈ 1/√g (frac ``frac``) by y ← (3y − g·y·y²)/2 from a public start y₀ ≤ 1/√g (two rounds a step)."""
    return await newton_inverse_sqrt_from(
        ops, g, ops.fixed(np.asarray(start, dtype=np.float64), frac), frac, iterations
    )


async def newton_inverse_sqrt_from(
    ops: FieldOps, g: ObjectArray, y: ObjectArray, frac: int, iterations: int
) -> ObjectArray:
    """As ``newton_inverse_sqrt`` from a start y₀ ≤ 1/√g given as shares (frac ``frac``)."""
    n = g.size
    for _ in range(iterations):
        both = await ops.mul(np.concatenate([g, y]), np.concatenate([y, y]), frac, 2 * frac + 2 * E_BITS)
        numerator = 3 * y * (1 << frac) - both[:n] * both[n:]
        y = await ops.trunc(numerator % ops.p, frac + 1, 2 * frac + E_BITS + 3, degree2t=True)
    return y


#: Most coupled Newton–Schulz steps between two recomputations of R = I − MX (``newton_schulz``).
NS_COUPLED_RUN = 16


async def newton_schulz(
    ops: FieldOps,
    m: ObjectArray,
    iterations: int,
    trace_bound: float,
    frac: int,
    x_bits: int,
    scale: tuple[int, int] = (1, 0),
) -> ObjectArray:
    """X ≈ M⁻¹ after ``iterations`` Newton–Schulz steps X ← X(2I − MX) from X₀ = I/trace_bound
    (M symmetric positive definite, λ_max ≤ trace_bound); ``scale`` = (a, s): a·X/2^s instead, from the
    last step's truncation.

    The steps are taken in the coupled form X ← X(I + R), R ← R² with R = I − MX (equal in
    exact arithmetic: I − MX(I + R) = R²), whose two products share one round, instead of two
    rounds a step. R² does not see M, so rounding errors in R may double every step while
    ‖R‖ ≈ 1: R is recomputed from M after at most ``NS_COUPLED_RUN`` steps (error ≤ 2^16 ulp),
    and the last step is the plain one, which squares the true residual. The first step is
    X₁ = X₀(2I − MX₀) = (2/t)·I − M/t² (t = trace_bound), linear in M, so X₁ and R₁ = I − (2/t)·M +
    M²/t² are made from M² in one round (one truncation from frac 3·frac; both have entries ≤ 2).
    Rounds: 11 steps take 12 (were 22), 25 take 27 (were 50).
    """
    d = m.shape[-1]
    one = 1 << frac
    eye = np.zeros((d, d), dtype=object)
    eye[np.diag_indices(d)] = one
    p = ops.p
    x = ops.fixed(np.eye(d) / trace_bound, frac)
    log_d = math.ceil(math.log2(d + 1))
    square_bits, product_bits = 2 * frac + log_d + 3, 2 * frac + x_bits + log_d + 3
    remaining = iterations
    residual = None
    if iterations > 1:
        a, b = round(2 * one / trace_bound), round(one / trace_bound**2)
        first = np.concatenate(
            [(a * eye - b * m) * one, eye * (one * one) - a * m * one + b * np.matmul(m, m)]
        )  # X₁ and R₁ at frac 3·frac
        both = await ops.trunc(first % p, 2 * frac, 3 * frac + log_d + 4, degree2t=True)
        x, residual = both[:d], both[d:]
        remaining -= 1
    while remaining > 1:
        if residual is None:
            residual = (eye - await ops.matmul(m, x, frac, square_bits)) % p
        run = min(remaining - 1, NS_COUPLED_RUN)
        for _ in range(run):
            both = np.concatenate([np.matmul(x, (eye + residual) % p), np.matmul(residual, residual)]) % p
            both = await ops.trunc(both, frac, product_bits, degree2t=True)
            x, residual = both[:d], both[d:]
        remaining -= run
        residual = None
    mx = await ops.matmul(m, x, frac, square_bits)
    factor, shift = scale
    return await ops.trunc(
        (factor * np.matmul(x, (2 * eye - mx) % p)) % p, frac + shift, product_bits + factor.bit_length(), degree2t=True
    )


async def clamp_thresholds(ops: FieldOps, lam: ObjectArray, frac: int, bits: int) -> ObjectArray:
    """min(λ, ρ·KAPPA_CLAMP) elementwise (λ ≥ 0, |λ| < 2^(bits−1) at ``frac``)."""
    limit = ops.fixed(ADMM_RHO * KAPPA_CLAMP, frac)
    excess = (lam - limit) % ops.p
    below = await less_than_zero(ops, excess, bits)
    clamped: ObjectArray = (limit + await ops.mul_exact(below, excess)) % ops.p
    return clamped


async def admm(
    ops: FieldOps, h: ObjectArray, z0: ObjectArray, later: Any, iterations: int, frac: int, k_iterations: int
) -> AdmmState:
    """``iterations`` over-relaxed ADMM steps from z₀ on the model (H, q, λ) (see the module docstring);
    ``later`` is an awaitable of (q, λ), which are first needed after Newton–Schulz (the caller may
    still be making them, ``FieldOps.start``).

    While Newton–Schulz makes rρ·K (its last truncation scales it), Hz₀ is truncated and the soft
    threshold's random bits are made (``FieldOps.pair_bits``); r·Kq enters each step's local product as
    rρ·K·(q/ρ), so the steps follow Newton–Schulz directly.
    """
    p, d1 = ops.p, z0.size
    one = 1 << frac
    log_d = math.ceil(math.log2(d1 + 1))
    x_bits = 2 * frac + ADMM_BITS + 1
    per_step = threshold_bits_needed(d1, frac, x_bits)
    random = ops.pair_bits(iterations * per_step) if iterations * per_step <= MAX_BITS_PER_BATCH else None
    hz0 = ops.start(ops.matmul, h, z0, frac, 2 * frac + ADMM_BITS + log_d + 6)
    shifted = h.copy()
    shifted[np.diag_indices(d1)] = (shifted[np.diag_indices(d1)] + ops.fixed(ADMM_RHO, frac)) % p
    a1 = await newton_schulz(ops, shifted, k_iterations, d1 + ADMM_RHO, frac, 3, _dyadic(ADMM_RELAX * ADMM_RHO))
    num_z, shift_z = _dyadic(1 - ADMM_RELAX)
    inv_rho = int(1 / ADMM_RHO)
    q, lam = await later
    q_rho = (inv_rho * q) % p
    w = (q_rho - inv_rho * await hz0) % p  # (q − Hz₀)/ρ
    z = z0 % p
    threshold = FusedThreshold(ops, (inv_rho * lam) % p, frac, x_bits, iterations)
    bits = None if random is None else (await random).reshape(iterations, per_step)
    state = AdmmState(z, z, z, z)
    for i in range(iterations):
        local = a1 @ ((z - w + q_rho) % p) + num_z * z * (one >> shift_z) + w * one  # rρK(z − w) + rKq + …
        v, z, z_abs, above, below = await threshold.step(local % p, None if bits is None else bits[i])
        w = (v - z) % p
        state = AdmmState(z, z_abs, above, below)
    return state


def _select_bits(frac: int, iterations: int, d1: int) -> tuple[int, int]:
    """ℓ of ``_select``'s comparisons: the polished point's clip and sign; the objective difference
    (and the step check's differences, |δ| < 2^ADMM_BITS, compared with it in one batch)."""
    log_d = math.ceil(math.log2(4 * d1))
    return frac + iterations + 12, 2 * frac + 2 * ADMM_BITS + log_d + 12


@dataclass(frozen=True)
class Polished:
    """A polished point clipped to ±2^(ADMM_BITS−1), its |·|, and the random bits of the selection's comparison."""

    clipped: ObjectArray
    clipped_abs: ObjectArray
    random: ObjectArray


def select_random_bits(d1: int, frac: int, iterations: int, checked: bool) -> int:
    """Random bits ``select`` uses: the objective difference, and with ``checked`` τ ∓ δ for both candidates."""
    return comparison_bits(1 + (4 * d1 if checked else 0), _select_bits(frac, iterations, d1)[1])


async def polish_and_select(
    ops: FieldOps,
    model: Model,
    state: AdmmState,
    iterations: int,
    frac: int,
    before: ObjectArray | None = None,
    tolerance: float = 0.0,
) -> tuple[ObjectArray, ObjectArray | None]:
    """The polished point on the support and signs of z if it lowers F, else z (``polish``, then ``select``)."""
    polished = await polish(ops, model, state, iterations, frac, before is not None)
    return await select(ops, model, state, polished, frac, iterations, before, tolerance)


async def polish(
    ops: FieldOps, model: Model, support: AdmmState, iterations: int, frac: int, checked: bool
) -> Polished:
    """Newton–Schulz on the support and signs of ``support``'s iterate (intercept always active), the
    solution clipped to ±2^(ADMM_BITS−1) (one comparison). Needs no other ADMM iterate, so a caller may
    run it beside ADMM (``secure_glm``: on the previous outer iteration's support).

    The random bits of the clip's and of ``select``'s comparisons (``FieldOps.pair_bits``) are made
    while Newton–Schulz runs.
    """
    p, d1 = ops.p, model.q.size
    one = 1 << frac
    clip_bits, _ = _select_bits(frac, iterations, d1)
    split = comparison_bits(3 * d1, clip_bits)
    random = ops.pair_bits(split + select_random_bits(d1, frac, iterations, checked))
    active = (support.above + support.below) % p
    active[-1] = 1
    sign = (support.above - support.below) % p
    pair = await ops.mul_exact(
        np.concatenate([np.outer(active, active).reshape(-1), model.lam]),
        np.concatenate([np.ones(d1 * d1, dtype=object), sign]),
    )
    mask, lam_sign = pair[: d1 * d1].reshape(d1, d1), pair[d1 * d1 :]
    masked = await ops.mul_exact(
        np.concatenate([mask.reshape(-1), active]), np.concatenate([model.h.reshape(-1), (model.q - lam_sign) % p])
    )
    m = masked[: d1 * d1].reshape(d1, d1)
    m[np.diag_indices(d1)] = (m[np.diag_indices(d1)] + (1 - active) * one) % p
    rhs = masked[d1 * d1 :]
    x_bits = iterations + 1
    x = await newton_schulz(ops, m, iterations, float(d1), frac, x_bits)
    solved = await ops.matmul(x, rhs, frac, 2 * frac + x_bits + 12)
    polished = await ops.mul_exact(active, solved)
    bits = await random
    bound = ops.fixed(2.0 ** (ADMM_BITS - 1), frac)
    signs = await less_than_zero(
        ops, np.concatenate([(bound - polished), (polished + bound), polished]) % p, clip_bits, bits[:split]
    )
    g_hi, g_lo, neg = signs[:d1], signs[d1 : 2 * d1], signs[2 * d1 :]
    prods = await ops.mul_exact(np.concatenate([g_hi, g_lo, neg]), np.concatenate([polished] * 3))
    hw, lw, nw = prods[:d1], prods[d1 : 2 * d1], prods[2 * d1 :]
    clipped = (polished + (g_hi - g_lo) * bound - hw - lw) % p
    clipped_abs = (polished - 2 * nw + (g_hi + g_lo) * bound - hw + lw) % p
    return Polished(clipped, clipped_abs, bits[split:])


async def select(
    ops: FieldOps,
    model: Model,
    state: AdmmState,
    polished: Polished,
    frac: int,
    iterations: int,
    before: ObjectArray | None = None,
    tolerance: float = 0.0,
) -> tuple[ObjectArray, ObjectArray | None]:
    """As the lasso's selection: the polished point w if 2(F(w) − F(z)) < 0, else the ADMM iterate z; with
    ``before``, also the number of j with |chosen_j − before_j| > ``tolerance`` (degree t, for a stopping
    rule's ``secure_compare.all_zero``).

    F's difference is compared unreduced (degree 2t), in one batch with the rule's [τ − δ_j < 0] +
    [τ + δ_j < 0] (1 exactly when |δ_j| > τ) for both candidates (opened at threshold 2t: a degree-t
    sharing is also one of degree 2t); the chosen candidate's count is selected with the point, in one
    round. ``polished.random`` must hold ``select_random_bits(…, checked=before is not None)`` bits.
    """
    p, d1 = ops.p, model.q.size
    _, objective_bits = _select_bits(frac, iterations, d1)
    z = state.z
    delta = (polished.clipped - z) % p
    log_d = math.ceil(math.log2(4 * d1))
    hb = await ops.matmul(np.stack([z, delta]), model.h.T, frac, 2 * frac + ADMM_BITS + log_d)
    grad = (hb[0] - model.q) % p
    twice = (2 * delta * grad + delta * hb[1] + 2 * model.lam * ((polished.clipped_abs - state.z_abs) % p)).sum() % p
    values = [np.array([twice], dtype=object)]
    if before is not None:
        tau = ops.fixed(tolerance, frac)
        steps = (np.stack([z, polished.clipped]) - before) % p
        values.append(np.concatenate([tau - steps, tau + steps], axis=1).reshape(-1))
    bits = await less_than_zero(ops, np.concatenate(values) % p, objective_bits, polished.random, degree2t=True)
    better = bits[:1]
    if before is None:
        choice = await ops.mul_exact(np.broadcast_to(better, delta.shape).copy(), delta)
        return (z + choice) % p, None
    counts = bits[1:].reshape(2, 2 * d1).sum(axis=1) % p  # violations of z, of the clipped polished point
    both = await ops.mul_exact(
        np.broadcast_to(better, (d1 + 1,)).copy(), np.concatenate([delta, [(counts[1] - counts[0]) % p]])
    )
    chosen: ObjectArray = (z + both[:d1]) % p
    return chosen, (counts[0] + both[d1:]) % p


async def solve(ops: FieldOps, model: Model, iterations: int, frac: int) -> ObjectArray:
    """H⁻¹q by Newton–Schulz (the model without an L1 part)."""
    x_bits = iterations + 1
    x = await newton_schulz(ops, model.h, iterations, float(model.q.size), frac, x_bits)
    return await ops.matmul(x, model.q, frac, 2 * frac + x_bits + 12)
