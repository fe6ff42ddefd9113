"""Secure Poisson regression (log link) on the join's additive shares (MPyC).

One party of three runs ``secure_fit_poisson``; the owners (MPC parties 0 and 1) get the
coefficients and the metrics the study asks for, the helper nothing. The algorithm is
``poisson_plan``'s; its float64 twin is ``services/testkit/glm_reference.fit_poisson_plain``.
The rows, the quadratic models and their solves are the logistic fit's (``secure_glm``,
``secure_qp``); the start, the exponential and the per-step re-scaling are this module's.

Phases (``on_progress`` names, as the logistic fit's):

input       The rows [X′] (``secure_rows``).
gram        x̃ = [x̂ − μ̂, 1], the counts y (exact, at FRAC), ȳ and c_y = X̃ᵀy/m; the start
            b₀ ≈ log ȳ by one vectorised comparison of ȳ with the public grid e^(t_k), and
            κ₀ = e^(b₀), 1/κ₀ linear in the comparison bits.
iterations  Iteration 0 at v = 0 (μ̃ = 1, no exponential): the Hessian X̃ᵀX̃/m, the fixed
            Jacobi scaling e, X̃e, the first model. Every later one: s = X̃e·u (local),
            μ̃ = e^s (``exp_ratio``), g_u = X̃eᵀμ̃/m − e∘c_y/κ₀ and H_u = X̃eᵀdiag(μ̃)X̃e/m,
            the model re-scaled to unit diagonal (δ = 1/√diag by Newton), its solve
            (ADMM warm-started / polishing / Newton–Schulz), and u = δ∘z.
reveal      ŵ = (e∘δ)∘z unrounded (z the last model's solution: its zeros are exact) and
            b̂ = b₀ + u_b − ŵᵀμ̂, to the owners only; the metrics the spec lists in a wider field
            of their own (one conversion), opened to the owners only.

Fields: F_g (the rows, link, models; 40 fractional bits) is sized from each step's bound
(``poisson_field_bits``: 187 bits at m = 10,000, κ = 40); ADMM runs in the logistic fit's F_w.

Cross-validation (``secure_poisson_cv``) reuses the pieces: the rows (``normalised_rows`` once,
``centred_rows`` per training set), ``fit_steps`` without the stopping rule, and ``group_metrics``
(the metrics of consecutive groups of rows, each with its own start) for the held-out folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.limbs import cross_product
from services.lasso.core.params import RegressionResult, RegressionSpec
from services.lasso.core.poisson_plan import EXP_DEGREE, EXP_SQUARINGS, START_STEP, PoissonPlan, make_poisson_plan
from services.lasso.mpc.runtime import run_fit
from services.lasso.mpc.secure_functions import reciprocal_unit
from services.lasso.mpc.secure_glm import (
    ENCODING_OFFSET,
    FRAC,
    FRAC_TABLE,
    NORMALISE_SHIFT,
    OWNERS,
    W_FRAC,
    Fields,
    ProgressCallback,
    _log_rows,
    _mean_scale,
    _model,
    _Progress,
    _small_step,
    _solve_model,
    fields_with_big,
)
from services.lasso.mpc.secure_input import agreed_table, zero_columns
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_qp import (
    E_BITS,
    Model,
    clamp_thresholds,
    newton_inverse_sqrt,
    qp_field_bits,
)
from services.lasso.mpc.secure_rows import share_rows

__all__ = [
    "PoissonFit",
    "centred_rows",
    "exp_ratio",
    "fit_steps",
    "group_metrics",
    "log_counts",
    "metric_ops",
    "normalised_rows",
    "secure_fit_poisson",
]

ObjectArray = npt.NDArray[np.object_]
StepCallback = Callable[[int, bool], None]

#: e^(−u) and its Taylor powers stay below 2^LINK_BITS (t ≤ 2).
LINK_BITS = 8
#: |s| = |x̃ᵀv| < 2^(S_BITS − 1) (the assumed range S_HIGH − 512 < s ≤ S_HIGH).
S_BITS = 11


def _count_bits(plan: PoissonPlan) -> int:
    """Bits of a count y ≤ y_max (integer part)."""
    return max(1, math.ceil(math.log2(plan.y_max + 1)))


def _ratio_bits(plan: PoissonPlan) -> int:
    """μ̃ ≤ e^S_HIGH = 4m: bits of its integer part."""
    return math.ceil(plan.s_high / math.log(2)) + 1


def exp_frac(plan: PoissonPlan) -> int:
    return FRAC + plan.exp_extra_bits


def _sum_bits(plan: PoissonPlan) -> int:
    """|Σ_i μ̃_i·x̃e_ij·x̃e_ik| and |Σ_i μ̃_i·x̃e_ij| ≤ 4m·m at frac 2F + W_FRAC: μ̃ ≤ 4m and Σ_i x̃e_ij² ≤ m
    (e_j ≤ 1/√Var(x̃_j); the intercept column is 1), with a bit of margin for μ̃'s rounding."""
    return 2 * FRAC + W_FRAC + _log_rows(plan.glm) + _ratio_bits(plan) + 1


def _link_bits(plan: PoissonPlan) -> int:
    """The exponential (``exp_ratio``): Taylor and squarings at ``exp_frac``, the product by e^S, u = S − s."""
    fe = exp_frac(plan)
    return max(2 * fe + LINK_BITS + 2, fe + FRAC + _ratio_bits(plan) + 3, 2 * FRAC + S_BITS + 2)


def poisson_field_bits(plan: PoissonPlan, kappa: int) -> int:
    """F_g of the fit: the widest value any step opens (each call's bound), plus κ + 3."""
    glm = plan.glm
    lm, cb, rb = _log_rows(glm), _count_bits(plan), _ratio_bits(plan)
    l1 = math.ceil(math.log2(max(max(glm.l1), max(glm.ridge)) + 2))
    widest = max(
        FRAC + NORMALISE_SHIFT + 2,  # x̂
        _link_bits(plan),
        _sum_bits(plan),
        2 * FRAC + lm + cb + 4,  # X̃ᵀy
        FRAC + lm + cb + 4 + FRAC + lm,  # ȳ and c_y by 1/m
        FRAC + lm + rb + 2 + FRAC + lm,  # the sums by 1/m
        2 * FRAC + 2 * lm + cb + 8 + l1,  # γ/κ₀, λ/κ₀, c_y/κ₀
        2 * FRAC + 2 * E_BITS + lm + cb + 8,  # the first model in Jacobi units
        2 * FRAC + 2 * E_BITS + rb + 12,  # the re-scaled models
        FRAC + E_BITS + lm + l1 + 3,  # the thresholds' clamp
        2 * FRAC + E_BITS + 12,  # u = δ∘z, the reveal
    )
    return max(widest + kappa + 3, qp_field_bits(kappa, FRAC, glm.d + 1, glm.ns_solve_iterations))


def metric_field_bits(plan: PoissonPlan, kappa: int) -> int:
    """The metrics' field: residual squares and the R² ratio are wider than anything in the fit."""
    return max(_metric_bits(plan), _link_bits(plan)) + kappa + 3


def _fields(mpc: Any, plan: PoissonPlan) -> Fields:
    return fields_with_big(mpc, poisson_field_bits(plan, mpc.options.sec_param))


# ---- rows and start -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """x̃ (m × (d+1)), y (m, counts at FRAC), μ̂ (d,), ȳ and c_y = X̃ᵀy/m ((d+1,), at FRAC)."""

    x: ObjectArray
    y: ObjectArray
    mean: ObjectArray
    y_mean: Any
    cy: ObjectArray


async def normalised_rows(
    ops: FieldOps, raw: ObjectArray, spec: RegressionSpec, plan: PoissonPlan
) -> tuple[ObjectArray, ObjectArray]:
    """(x̂ at FRAC, the counts y exact at FRAC) of every row: one truncation of every feature entry."""
    glm = plan.glm
    features = raw[:, list(spec.feature_columns)]
    offsets = np.array([ENCODING_OFFSET + round(mid * 2.0**FRAC_TABLE) for mid in glm.mids], dtype=object)
    factors = np.array([round(2.0 ** (FRAC + NORMALISE_SHIFT - FRAC_TABLE) / h) for h in glm.halves], dtype=object)
    x_hat = await ops.trunc(((features - offsets) * factors) % ops.p, NORMALISE_SHIFT, FRAC + NORMALISE_SHIFT + 2)
    y = ((raw[:, spec.target] - ENCODING_OFFSET) << (FRAC - FRAC_TABLE)) % ops.p  # exact
    return x_hat, y


async def centred_rows(ops: FieldOps, x_hat: ObjectArray, y: ObjectArray, plan: PoissonPlan) -> Rows:
    """The fit's rows from x̂ and y (``plan.glm.n_rows`` of them): μ̂, ȳ, x̃ = [x̂ − μ̂, 1] and c_y."""
    glm = plan.glm
    p, m, d = ops.p, glm.n_rows, glm.d
    lm, cb = _log_rows(glm), _count_bits(plan)
    x_sums = x_hat.sum(axis=0) % p
    means = await _mean_scale(
        ops, np.concatenate([x_sums, [y.sum() % p]]) % p, m, FRAC + lm + cb + 2
    )  # |Σ x̂| ≤ m, Σ y ≤ m·y_max
    mean, y_mean = means[:d], means[d]
    x = np.concatenate([(x_hat - mean) % p, np.full((m, 1), 1 << FRAC, dtype=object)], axis=1)
    products = np.matmul(y, x) % p  # Σ_i y_i·x̃_i at 2·FRAC, degree 2t; |·| ≤ 2·m·y_max
    totals = await ops.trunc(products, FRAC, 2 * FRAC + lm + cb + 4, degree2t=True)
    cy = await _mean_scale(ops, totals, m, FRAC + lm + cb + 3)
    return Rows(x, y, mean, y_mean, cy)


async def _start(ops: FieldOps, y_mean: Any, plan: PoissonPlan) -> tuple[Any, Any, Any]:
    """(b₀, κ₀, 1/κ₀) at FRAC: ȳ against the grid e^(t_k), k ≥ 1, in one comparison; linear in the bits."""
    p = ops.p
    grid = plan.thresholds[1:]
    mids = plan.start_values
    if not grid:
        return ops.fixed(mids[0], FRAC), ops.fixed(math.exp(mids[0]), FRAC), ops.fixed(math.exp(-mids[0]), FRAC)
    differences = (y_mean - ops.fixed(np.exp(np.asarray(grid)), FRAC)) % p
    below = await ops.less_than_zero(differences, FRAC + _count_bits(plan) + 3)
    above = (1 - below) % p  # β_k, monotone: 1…1 0…0
    steps_b = np.full(len(grid), round(START_STEP * (1 << FRAC)), dtype=object)
    steps_kappa = ops.fixed(np.diff(np.exp(np.asarray(mids))), FRAC)
    steps_inverse = ops.fixed(np.diff(np.exp(-np.asarray(mids))), FRAC)
    b0 = (ops.fixed(mids[0], FRAC) + np.dot(above, steps_b)) % p
    kappa = (ops.fixed(math.exp(mids[0]), FRAC) + np.dot(above, steps_kappa)) % p
    inverse = (ops.fixed(math.exp(-mids[0]), FRAC) + np.dot(above, steps_inverse)) % p
    return b0, kappa, inverse


# ---- the link: μ̃ = e^s ------------------------------------------------------------------------------


async def _exp_neg(ops: FieldOps, t: ObjectArray, frac: int) -> ObjectArray:
    """e^(−t·2^K) at ``frac`` for t ∈ [0, 2] at ``frac``: Taylor polynomial of degree 6, then K squarings."""
    one = 1 << frac
    bits = 2 * frac + LINK_BITS + 2
    square = await ops.mul(t, t, frac, bits)
    n = t.size
    third_fourth = await ops.mul(np.concatenate([t, square]), np.concatenate([square, square]), frac, bits)
    cube, fourth = third_fourth[:n], third_fourth[n:]
    fifth_sixth = await ops.mul(np.concatenate([square, cube]), np.concatenate([cube, cube]), frac, bits)
    powers = [t, square, cube, fourth, fifth_sixth[:n], fifth_sixth[n:]][:EXP_DEGREE]
    total = np.full(t.shape, one * one, dtype=object)
    for k, power in enumerate(powers, start=1):
        total = total + round(one * (-1) ** k / math.factorial(k)) * power
    value = await ops.trunc(total % ops.p, frac, bits)
    for _ in range(EXP_SQUARINGS):
        value = await ops.mul(value, value, frac, bits)
    return value


async def exp_ratio(ops: FieldOps, s2: ObjectArray, plan: PoissonPlan) -> tuple[ObjectArray, ObjectArray]:
    """(μ̃ at FRAC, μ̃ at W_FRAC) for μ̃ = e^s, from s·2^(2·FRAC) (degree 2t; S_HIGH − 512 < s ≤ S_HIGH).

    e^s = e^S_HIGH·e^(−u), u = S_HIGH − s ∈ [0, 512): t = u/2^K is taken at ``exp_frac`` (one
    truncation), e^(−u) by ``_exp_neg`` at that precision, and one product by the public
    e^S_HIGH at two scales gives both results in one truncation.
    """
    p, fe = ops.p, exp_frac(plan)
    numerator = (ops.fixed(plan.s_high, 2 * FRAC) - s2) % p
    t = await ops.trunc(numerator, 2 * FRAC + EXP_SQUARINGS - fe, 2 * FRAC + S_BITS + 2, degree2t=True)
    value = await _exp_neg(ops, t, fe)
    scale = math.exp(plan.s_high)
    factors = np.array([round(scale * (1 << FRAC)), round(scale * (1 << W_FRAC))], dtype=object)
    both = await ops.trunc(
        (np.concatenate([value, value]) * np.repeat(factors, value.size)) % p, fe, fe + FRAC + _ratio_bits(plan) + 3
    )
    return both[: value.size], both[value.size :]


# ---- the outer iterations ------------------------------------------------------------------------


async def _sums(
    ops: FieldOps, x: ObjectArray, mu_f: ObjectArray | None, mu_w: ObjectArray | None, plan: PoissonPlan
) -> tuple[ObjectArray, ObjectArray]:
    """(X̃ᵀμ̃/m, X̃ᵀdiag(μ̃)X̃/m) at FRAC (as ``secure_glm._sums``, bounds for μ̃ ≤ 4m); None means μ̃ = 1."""
    p, m, d1 = ops.p, plan.glm.n_rows, x.shape[1]
    lm, rb = _log_rows(plan.glm), _ratio_bits(plan)
    if mu_f is None or mu_w is None:
        weighted = (x << W_FRAC) % p
        residual = np.full(m, 1 << FRAC, dtype=object)
    else:
        # The intercept column is the public 1: its product needs no degree reduction.
        weighted = np.concatenate([await ops.mul_exact(x[:, :-1], mu_w[:, None]), (mu_w[:, None] << FRAC) % p], axis=1)
        residual = mu_f
    sums = cross_product(x, np.concatenate([weighted, (residual[:, None] << W_FRAC) % p], axis=1), ops.bits)
    both = np.concatenate([sums[:, :d1].reshape(-1), sums[:, d1]]) % p
    totals = await ops.trunc(both, FRAC + W_FRAC, _sum_bits(plan), degree2t=True)
    scaled = await _mean_scale(ops, totals, m, FRAC + lm + rb + 2)
    return scaled[d1 * d1 :], scaled[: d1 * d1].reshape(d1, d1)


@dataclass(frozen=True)
class Scaling:
    """The fixed Jacobi scaling e (e_b = 1), X̃e, γ̃∘e², λ̃∘e unclamped, and e∘c_y/κ₀."""

    e: ObjectArray
    xe: ObjectArray
    ridge: ObjectArray
    lam: ObjectArray
    cy: ObjectArray


async def _first_step(ops: FieldOps, rows: Rows, inverse_kappa: Any, plan: PoissonPlan) -> tuple[Scaling, Model]:
    """Iteration 0 at v = 0 (μ̃ = 1): the Jacobi scaling, X̃e and the first model."""
    glm = plan.glm
    p, d, one = ops.p, glm.d, 1 << FRAC
    lm, cb = _log_rows(glm), _count_bits(plan)
    ones_sum, hessian = await _sums(ops, rows.x, None, None, plan)
    # γ̃ = γ/κ₀, λ̃ = λ/κ₀ and c_y/κ₀ (1/κ₀ ≤ m).
    scaled = await ops.mul(
        np.concatenate([ops.fixed(glm.ridge, FRAC), ops.fixed(glm.l1, FRAC), rows.cy]),
        np.full(3 * (d + 1), inverse_kappa, dtype=object),
        FRAC,
        2 * FRAC + 2 * lm + cb + 8 + math.ceil(math.log2(max(max(glm.l1), max(glm.ridge)) + 2)),
    )
    ridge, lam, cy_kappa = scaled[: d + 1], scaled[d + 1 : 2 * (d + 1)], scaled[2 * (d + 1) :]
    diagonal = (np.diag(hessian)[:d] + ridge[:d]) % p
    e_features = await newton_inverse_sqrt(ops, diagonal, plan.first_start, FRAC, plan.first_newton)
    e = np.concatenate([e_features, [one]])
    outer = await ops.trunc(np.outer(e, e) % p, FRAC, 2 * FRAC + 2 * E_BITS + 2, degree2t=True)
    second = await ops.mul(
        np.concatenate([outer.reshape(-1), e, e, np.diag(outer), e]),
        np.concatenate([hessian.reshape(-1), ones_sum, lam, ridge, cy_kappa]),
        FRAC,
        2 * FRAC + 2 * E_BITS + lm + cb + 8,
    )
    k = (d + 1) ** 2
    h_u = second[:k].reshape(d + 1, d + 1)
    g_ones = second[k : k + d + 1]
    lam_u = second[k + d + 1 : k + 2 * (d + 1)]
    ridge_u = second[k + 2 * (d + 1) : k + 3 * (d + 1)]
    cy_u = second[k + 3 * (d + 1) :]
    xe_features = await ops.mul(rows.x[:, :d], e_features[None, :], FRAC, 2 * FRAC + E_BITS + 3)
    xe = np.concatenate([xe_features, np.full((glm.n_rows, 1), one, dtype=object)], axis=1)
    scaling = Scaling(e, xe, ridge_u, lam_u, cy_u)
    gradient = (g_ones - cy_u) % p
    clamped = await _clamp(ops, lam_u, plan)
    return scaling, _model(ops, h_u, (-gradient) % p, ridge_u, clamped)


async def _clamp(ops: FieldOps, lam: ObjectArray, plan: PoissonPlan) -> ObjectArray:
    bound = FRAC + E_BITS + _log_rows(plan.glm) + math.ceil(math.log2(max(plan.glm.l1) + 2)) + 3
    return await clamp_thresholds(ops, lam, FRAC, bound)


async def _next_model(
    ops: FieldOps, rows: Rows, scaling: Scaling, u: ObjectArray, plan: PoissonPlan
) -> tuple[Model, ObjectArray, ObjectArray]:
    """(the model at u re-scaled to unit diagonal, δ, the warm start u/δ)."""
    p, d1 = ops.p, u.size
    mu_f, mu_w = await exp_ratio(ops, np.matmul(scaling.xe, u) % p, plan)
    mu_sum, hessian = await _sums(ops, scaling.xe, mu_f, mu_w, plan)
    gradient = (mu_sum - scaling.cy) % p
    rb = _ratio_bits(plan)
    q = await ops.trunc(
        (np.matmul(hessian, u) - gradient * (1 << FRAC)) % p,
        FRAC,
        2 * FRAC + 9 + rb + math.ceil(math.log2(d1)) + 3,
        degree2t=True,
    )
    full = _model(ops, hessian, q, scaling.ridge, scaling.lam)
    diagonal = np.diag(full.h).copy()
    delta = await newton_inverse_sqrt(ops, diagonal, [plan.rescale_start] * d1, FRAC, plan.rescale_newton)
    first = await ops.mul(
        np.concatenate([np.outer(delta, delta).reshape(-1), diagonal]),
        np.concatenate([np.ones(d1 * d1, dtype=object), delta]),
        FRAC,
        2 * FRAC + 2 * E_BITS + rb + 4,
    )
    outer, root = first[: d1 * d1], first[d1 * d1 :]  # δδᵀ, √diag = diag·δ
    second = await ops.mul(
        np.concatenate([outer, delta, delta, root]),
        np.concatenate([full.h.reshape(-1), full.q, scaling.lam, u]),
        FRAC,
        2 * FRAC + 2 * E_BITS + rb + 12,
    )
    h = second[: d1 * d1].reshape(d1, d1)
    q_scaled = second[d1 * d1 : d1 * d1 + d1]
    lam = await _clamp(ops, second[d1 * d1 + d1 : d1 * d1 + 2 * d1], plan)
    warm = second[d1 * d1 + 2 * d1 :]
    return Model(h, q_scaled, lam), delta, warm


# ---- metrics -------------------------------------------------------------------------------------


def _residual_bits(plan: PoissonPlan) -> int:
    """|y − μ| < 2^(bits − 1) with μ = κ₀·μ̃ ≤ 1.1·y_max·4m."""
    return _ratio_bits(plan) + _count_bits(plan) + 2


def _spread_bound(plan: PoissonPlan) -> int:
    """Var(y)/y_max² ≥ 1/bound when the counts are not all equal (one count differs: Var ≥ (1 − 1/m)/m)."""
    return math.ceil(2 * plan.glm.n_rows * max(plan.y_max, 1.0) ** 2)


def _metric_bits(plan: PoissonPlan) -> int:
    lm, rbits = _log_rows(plan.glm), _residual_bits(plan)
    return max(2 * FRAC + 2 * rbits + lm + 2, 2 * FRAC + 2 * rbits + _spread_bound(plan).bit_length() + 8)


async def log_counts(ops: FieldOps, y: ObjectArray, plan: PoissonPlan) -> ObjectArray:
    """log y′ per row at FRAC, y′ = y + [y = 0] ∈ [1, y_max] (one comparison per row), so y·log y′ = y·log y.

    Newton on e^ℓ = y′ from ℓ₀ = log y_max: the iterates decrease to log y′ ≥ 0, so every e^(−ℓ)
    is in (0, 1] and is the fit's exponential (Taylor at ℓ/2^8, then 8 squarings; relative error
    ≈ 1e-10). Counts are whole numbers; a non-integer y in (0, ½) would count as y·log(y + 1), and
    every bound still holds.
    """
    p, one = ops.p, 1 << FRAC
    cb = _count_bits(plan)
    zero = await ops.less_than_zero((y - (one >> 1)) % p, FRAC + cb + 2)
    y_one = (y + zero * one) % p
    ell = np.full(y.shape, ops.fixed(math.log(max(plan.y_max, 1.0)), FRAC), dtype=object)
    log_bits = FRAC + max(1, math.ceil(math.log2(math.log(max(plan.y_max, 2.0)) + 1))) + 2
    for _ in range(log_steps(plan.y_max)):
        t = await ops.trunc(ell, EXP_SQUARINGS, log_bits)
        ratio = await ops.mul(y_one, await _exp_neg(ops, t, FRAC), FRAC, 2 * FRAC + cb + 3)
        ell = (ell - one + ratio) % p
    return ell


async def _group_mean(ops: FieldOps, sums: ObjectArray, sizes: list[int], bits: int) -> ObjectArray:
    """sums_i/n_i at FRAC for sums at FRAC (|sums| < 2^(bits−1)), n_i public: one truncation
    (``secure_glm._mean_scale`` with one count per entry)."""
    shift = FRAC + max(1, math.ceil(math.log2(max(sizes) + 1)) + 1)
    factors = np.array([round(2.0**shift / n) for n in sizes], dtype=object)
    return await ops.trunc((sums * factors) % ops.p, shift, bits + shift - math.floor(math.log2(min(sizes))) + 2)


async def group_metrics(
    ops: FieldOps,
    s: ObjectArray,
    y: ObjectArray,
    ell: ObjectArray,
    b0: ObjectArray,
    kappa: ObjectArray,
    sizes: list[int],
    metrics: tuple[str, ...],
    plan: PoissonPlan,
) -> ObjectArray:
    """The listed metrics at FRAC, shape (groups, metrics), of consecutive groups of rows (``sizes``),
    group g predicting μ = κ₀_g·e^s with its own start b₀_g (η = b₀_g + s); s, y, ℓ = log y′ at FRAC:
    MSE = (1/n)·Σ(y − μ)², R² = 1 − MSE/Var(y), adjusted R² = 1 − (1 − R²)·(n − 1)/(n − d − 1),
    and the mean deviance (2/n)·Σ(y·log y − y·η + μ − y) (y·log y = 0 at y = 0: ``log_counts``).
    The bounds are ``plan``'s (its m ≥ every group's n); the in-sample metrics are one group."""
    groups = len(sizes)
    if not metrics:
        return np.zeros((groups, 0), dtype=object)
    unknown = set(metrics) - {"mse", "r2", "adjusted_r2", "deviance"}
    if unknown:
        raise ValueError(f"metrics not available for the Poisson fit: {sorted(unknown)}")
    p, one, d = ops.p, 1 << FRAC, plan.glm.d
    lm, cb, rbits = _log_rows(plan.glm), _count_bits(plan), _residual_bits(plan)
    starts = np.cumsum([0, *sizes[:-1]])
    row_group = np.repeat(np.arange(groups), sizes)

    def by_group(values: ObjectArray) -> ObjectArray:
        return np.add.reduceat(values, starts) % p

    mu_f, _ = await exp_ratio(ops, (s << FRAC) % p, plan)
    mu = await ops.mul(mu_f, kappa[row_group], FRAC, 2 * FRAC + rbits + 2)
    y_sum = by_group(y)
    values: dict[str, Any] = {}
    if "deviance" in metrics:
        # 2·[Σ y·ℓ − b₀·Σ y − Σ y·s + Σ μ − Σ y] at 2·FRAC, degree 2t
        total = (by_group(y * ell) - b0 * y_sum - by_group(y * s) + (by_group(mu) - y_sum) * one) * 2 % p
        bits = 2 * FRAC + lm + rbits + S_BITS + 4
        scaled = await ops.trunc(total, FRAC, bits, degree2t=True)
        values["deviance"] = await _group_mean(ops, scaled, sizes, bits - FRAC)
    if {"mse", "r2", "adjusted_r2"} & set(metrics):
        residual = (y - mu) % p
        squares = np.concatenate([by_group(residual * residual), by_group(y * y)]) % p
        totals = await ops.trunc(squares, FRAC, 2 * FRAC + 2 * rbits + lm + 2, degree2t=True)
        means = await _group_mean(ops, np.concatenate([totals, y_sum]), sizes * 3, FRAC + 2 * rbits + lm + 2)
        values["mse"], second_moment, y_mean = means[:groups], means[groups : 2 * groups], means[2 * groups :]
    if {"r2", "adjusted_r2"} & set(metrics):
        y_max2 = max(plan.y_max, 1.0) ** 2
        square_mean = await ops.mul(y_mean, y_mean, FRAC, 2 * FRAC + 2 * cb + 4)
        variance = (second_moment - square_mean) % p
        both = await ops.mul(
            np.concatenate([variance, values["mse"]]),
            ops.fixed([1 / y_max2] * (2 * groups), FRAC),
            FRAC,
            2 * FRAC + 2 * rbits + 2,
        )
        bound = _spread_bound(plan)
        inverse = await reciprocal_unit(ops, both[:groups], bound, FRAC)  # y_max²/Var(y) ≤ bound
        ratio = await ops.mul(both[groups:], inverse, FRAC, 2 * FRAC + bound.bit_length() + 2 * rbits + 4)
        factors = [(n - 1) / max(n - d - 1, 1) for n in sizes]
        adjusted = await ops.mul(ratio, ops.fixed(factors, FRAC), FRAC, 2 * FRAC + 2 * rbits + bound.bit_length() + 8)
        values["r2"], values["adjusted_r2"] = (one - ratio) % p, (one - adjusted) % p
    return np.array([values[name] for name in metrics], dtype=object).T.copy()


def log_steps(y_max: float) -> int:
    """Newton steps ℓ ← ℓ − 1 + y·e^(−ℓ) from ℓ₀ = log y_max to log y (1 ≤ y ≤ y_max) within 1e-15:
    about one unit a step while far above, then quadratic (checked for y_max up to 2^20)."""
    return math.ceil(math.log(max(y_max, 1.0))) + 6


def metric_ops(mpc: Any, plan: PoissonPlan) -> FieldOps:
    """The metrics' wider field (``metric_field_bits``)."""
    kappa = mpc.options.sec_param
    return FieldOps(mpc, mpc.SecFxp(metric_field_bits(plan, kappa) - FRAC - kappa - 2, FRAC))


# ---- the fit ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoissonFit:
    """One fit's shares: ŵ = factor∘z (z the last model's solution: its zeros are exact), u in the
    Jacobi units (s = X̃e·u, u_b the intercept's offset from b₀), X̃e, and the outer iterations used."""

    factor: ObjectArray
    z: ObjectArray
    u: ObjectArray
    xe: ObjectArray
    used: int


async def fit_steps(
    fields: Fields, rows: Rows, inverse_kappa: Any, plan: PoissonPlan, stopping: bool, on_step: StepCallback
) -> PoissonFit:
    """The outer iterations of one fit from the start 1/κ₀; with ``stopping``, the stopping rule
    (``secure_glm._small_step``, one opened bit per check), otherwise every planned iteration.
    ``on_step(used, stopped)`` after each."""
    big, glm = fields.big, plan.glm
    scaling, model = await _first_step(big, rows, inverse_kappa, plan)
    u = await _solve_model(fields, model, np.zeros(glm.d + 1, dtype=object), glm, 0)
    on_step(1, False)
    z, factor = u, scaling.e  # u = factor/e ∘ z; the reveal uses z, whose zeros are exact
    used = 1
    for k in range(1, glm.outer_iterations):
        model, delta, warm = await _next_model(big, rows, scaling, u, plan)
        z = await _solve_model(fields, model, warm, glm, k)
        new = await big.mul(delta, z, FRAC, 2 * FRAC + E_BITS + 12)  # rounded: a zero may become ±2^−40
        stop = stopping and glm.checks[k] and await _small_step(big, new, u)  # the logistic fit's rule, in u's units
        u, factor, used = new, delta, k + 1
        on_step(used, stop)
        if stop:
            break
    if glm.outer_iterations > 1:
        factor = await big.mul(scaling.e, factor, FRAC, 2 * FRAC + 2 * E_BITS + 2)  # e∘δ
    return PoissonFit(factor, z, u, scaling.xe, used)


async def secure_fit_poisson(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """This party's side of a secure Poisson fit; parties 0 and 1 get the result, 2 gets None."""
    table = await agreed_table(mpc, shares, spec)
    n_rows = table.shape[0]
    plan = make_poisson_plan(spec, n_rows)
    glm = plan.glm
    fields = _fields(mpc, plan)
    big = fields.big
    p = big.p
    progress = _Progress(on_progress)
    zero = zero_columns(spec, len(mpc.parties))

    progress.report("input", 0, n_rows)
    raw = await share_rows(big, table, zero, lambda done: progress.report("input", done, n_rows))
    progress.report("gram", 0, 1)
    rows = await centred_rows(big, *await normalised_rows(big, raw, spec, plan), plan)
    b0, kappa, inverse_kappa = await _start(big, rows.y_mean, plan)
    progress.report("gram", 1, 1)

    outer = glm.outer_iterations
    progress.report("iterations", 0, outer)
    fit = await fit_steps(
        fields,
        rows,
        inverse_kappa,
        plan,
        True,
        lambda used, stop: progress.report("iterations", outer if stop else used, outer),
    )

    progress.report("reveal", 0, 1)
    opened_metrics = await _metrics(mpc, big, np.matmul(fit.xe, fit.u) % p, kappa, b0, rows, spec.metrics, plan)
    opened = await _reveal(big, fit.factor, rows, fit.z, fit.u[glm.d], b0)
    progress.report("reveal", 1, 1)
    if opened is None:
        return None
    floats = big.to_float(opened, 2 * FRAC)
    d = glm.d
    w, b = glm.to_original([float(v) for v in floats[:d]], float(floats[d]))
    return RegressionResult(
        coefficients=tuple(w),
        intercept=b,
        alpha=glm.alpha,
        joined=n_rows,
        iterations=fit.used,
        metrics=tuple((name, float(v)) for name, v in zip(spec.metrics, opened_metrics, strict=True)),
    )


async def _metrics(
    mpc: Any,
    big: FieldOps,
    s2: ObjectArray,
    kappa: Any,
    b0: Any,
    rows: Rows,
    metrics: tuple[str, ...],
    plan: PoissonPlan,
) -> list[float]:
    """The listed metrics, opened to the owners (others get []): s, y, κ₀ and b₀ move to a wider
    field (one conversion) where ``group_metrics`` runs, so the fit's field stays narrow."""
    if not metrics:
        return []
    wide = metric_ops(mpc, plan)
    s = await big.trunc(s2, FRAC, 2 * FRAC + S_BITS + 1, degree2t=True)
    m = s.size
    moved = await big.convert(
        np.concatenate([s, rows.y, [kappa, b0]]) % big.p, wide, FRAC + max(S_BITS, _count_bits(plan)) + 4
    )
    y = moved[m : 2 * m]
    ell = await log_counts(wide, y, plan) if "deviance" in metrics else np.zeros(m, dtype=object)
    values = await group_metrics(
        wide, moved[:m], y, ell, moved[2 * m + 1 :], moved[2 * m : 2 * m + 1], [m], metrics, plan
    )
    opened = await wide.output(values[0], OWNERS)
    return [] if opened is None else [float(v) for v in wide.to_float(opened, FRAC)]


async def _reveal(
    ops: FieldOps, factor: ObjectArray, rows: Rows, z: ObjectArray, u_b: Any, b0: Any
) -> ObjectArray | None:
    """Open [ŵ = (e∘δ)∘z unrounded (frac 2F: a zero of z stays exactly 0), b̂ = b₀ + u_b − ŵᵀμ̂ (frac 2F)]
    to the owners."""
    p, one, d = ops.p, 1 << FRAC, rows.mean.size
    exact_w = (factor[:d] * z[:d]) % p  # degree 2t, frac 2F
    w_hat = await ops.trunc(exact_w, FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)
    b_hat = ((b0 + u_b) * one - np.dot(w_hat, rows.mean)) % p
    return await ops.output_product(np.concatenate([exact_w, [b_hat]]) % p, OWNERS)


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime, fit, shut down (as ``secure_glm.run_party``)."""
    return await run_fit(mpc, lambda: secure_fit_poisson(mpc, shares, spec, on_progress))
