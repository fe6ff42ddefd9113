"""Secure GLM fits (logistic regression) on the join's additive shares (MPyC).

One party of three runs ``secure_fit_glm`` with its own share matrix; the two data
owners (MPC parties 0 and 1) receive the coefficients and the metrics the study asks
for, the helper (party 2) nothing. The algorithm is ``glm_plan``'s; its float64 twin is
``services/testkit/glm_reference.fit_glm_plain``.

Phases (``on_progress`` names, as the lasso's):

input       Each party Shamir-shares its integer shares mod p and keeps the rows
            (``secure_rows``): [X′], m × c.
gram        Public normalisation x̂ = (x − mid)/h (one truncation of every entry), the
            secret feature means μ̂ and the centred rows x̃ = [x̂ − μ̂, 1]; balanced class
            weights c_i = m/(2·m_{y_i}) by a secure reciprocal of the class share.
iterations  Outer iteration 0 at v = 0 (p = ½, s = ¼, no link function): gradient and
            Hessian from the rows, the fixed Jacobi scaling e = 1/√G¹_jj (Newton) and
            e·eᵀ, and the first model. Every later iteration: v = e∘u (one truncation of
            d + 1 values) and η = X̃·v (one local product; the m × d rows are never
            scaled), σ(η) and σ(1 − σ) (``secure_functions``), the gradient and Hessian
            (local products, one degree reduction of every weighted row), scaled to u's
            units on the sums, the model, and its warm-started solve (``secure_qp``). The
            model's H goes to ADMM's field straight from the unrounded scaled sums, and its
            q and λ (iteration 0: the clamp of λ) are made while ADMM's Newton–Schulz runs
            (``MovingModel``); where the plan polishes, the polishing on the previous
            iteration's ADMM support runs beside ADMM too (``_solve_and_check``). From the
            fourth iteration on, the stopping rule (``_small_step``; with an L1 part its
            comparisons run inside the selection, ``secure_qp.select``) opens one bit:
            whether the Newton step was below ``glm_plan.STEP_TOLERANCE``.
reveal      ŵ = e∘u (opened unrounded: exact zeros) and b̂ = b̃ − ŵᵀμ̂, and the metrics,
            to parties 0 and 1 only; the public map to the original scale is applied in
            the clear. Every other opening is of a masked value, except the stopping
            bits (to all three parties: the number of outer iterations used).

Fields: the rows, link functions and models share one prime field F_g (40 fractional
bits, sized from m so that no sum wraps); the signs of η are compared in a 61-bit field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import (
    E_BANDS,
    E_NEWTON_FROM_BANDS,
    ETA_BITS,
    STEP_TOLERANCE,
    GlmPlan,
    make_glm_plan,
)
from services.lasso.core.limbs import cross_product
from services.lasso.core.params import ModelKind, RegressionResult, RegressionSpec
from services.lasso.mpc.runtime import run_fit
from services.lasso.mpc.secure_compare import all_zero, compare_field_bits, less_than_zero, trunc_convert
from services.lasso.mpc.secure_functions import (
    LINK_BITS,
    compare_bits,
    reciprocal_unit,
    sigmoid,
    sign_bits,
    start_sign_random,
)
from services.lasso.mpc.secure_input import agreed_table, zero_columns
from services.lasso.mpc.secure_metrics import classification_metrics, metric_field_bits
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_qp import (
    ADMM_BITS,
    E_BITS,
    AdmmState,
    Model,
    Polished,
    admm,
    admm_field_bits,
    clamp_thresholds,
    newton_inverse_sqrt_from,
    polish,
    polish_and_select,
    qp_field_bits,
    select,
    solve,
)
from services.lasso.mpc.secure_rows import share_rows

__all__ = ["FRAC", "secure_fit_glm"]

ObjectArray = npt.NDArray[np.object_]
ProgressCallback = Callable[[str, int, int], None]

FRAC = 40  # fractional bits of every value in F_g
#: Fractional bits of the Hessian weights w: the Hessian only sets the speed of convergence (the
#: gradient, at FRAC, sets the fixed point), and w·x̃·x̃ summed at 2·FRAC + W_FRAC keeps F_g under 192 bits.
W_FRAC = 20
#: Fractional bits in F_w (ADMM); the lasso's is 32. ADMM only finds the support and the next iterate
#: (the polished steps, in F_g at FRAC, set the accuracy), and at 20 the soft threshold compares
#: 30-bit values (ℓ + 2 ≤ 32 leaves), so an ADMM iteration takes 6 rounds instead of 7.
FRAC_W = 20
#: The SVM decides which rows are active (1 − ỹη > 0) on the margin rounded to 2^−MARGIN_FRAC: a
#: row within 2^−11 of the margin may count either way (the three-party truncation is off by −1 … +2
#: units), changing its gradient term by less than 2·2^−11·|x̃| (the accuracy goal of the SVM is 1e-3
#: relative; measured ~1e-11 on the test data).
MARGIN_FRAC = 12
#: |model entries| < 2^(MODEL_BITS − 1) when moved to F_w (|q| ≤ (d+1)·2^8 + 2, |λ| ≤ 16, |u| < 2^8).
MODEL_BITS = 26
FRAC_TABLE = 32  # the join's encoding: x′ = round(x·2^32) + 2^63
ENCODING_OFFSET = 1 << 63
#: x̂·2^FRAC = (x′ − offset)·C_j / 2^NORMALISE_SHIFT with C_j = round(2^(FRAC + SHIFT − 32)/h_j).
NORMALISE_SHIFT = 64
#: |x̃·e| < 2^(X_BITS − 1) (x̃ ∈ [−2, 2], e < 2^(E_BITS − 1)): sizes the row sums and η in F_g. The rows are no
#: longer scaled (|x̃| ≤ 2), so this over-states them by a few bits of F_g, kept as a margin.
X_BITS = E_BITS + 2
OWNERS = [0, 1]


@dataclass
class _Progress:
    callback: ProgressCallback | None
    total: int = 0

    def report(self, phase: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(phase, done, total)


def sum_bits(log_rows: int) -> int:
    """Bits of Σ_i w·x̃e·x̃e at frac 2F + W_FRAC (≤ m by Cauchy–Schwarz, |x̃e| < 2^(X_BITS−1); margin)."""
    return 2 * FRAC + W_FRAC + log_rows + X_BITS + 6


def _log_rows(plan: GlmPlan) -> int:
    return max(1, math.ceil(math.log2(plan.n_rows + 1)) + 1)


def glm_field_bits(plan: GlmPlan, kappa: int) -> int:
    """Prime size of F_g: the widest opened value (see each bound) plus κ + 3."""
    f, lm = FRAC, _log_rows(plan)
    d1 = plan.d + 1
    normalise = f + NORMALISE_SHIFT + 2
    scaled_sums = sum_bits(lm)
    eta = 2 * f + X_BITS + 9 + math.ceil(math.log2(d1)) + 2  # |x̃e_j·u_j| < 2^(X_BITS + 8)
    reveal = 2 * f + E_BITS + 10
    reciprocal = 2 * f + lm + 4  # class weights: 1/a ≤ m at frac f
    jacobi = 2 * f + 2 * E_BITS + lm + 3  # _next_rest
    link = 3 * f + LINK_BITS + 2  # the exponential's Taylor polynomial, rounded once from frac 3F
    widest = max(normalise, scaled_sums, eta, reveal, reciprocal, jacobi, link)
    return max(
        widest + kappa + 3, qp_field_bits(kappa, f, d1, plan.ns_solve_iterations), metric_field_bits(kappa, f, lm)
    )


@dataclass(frozen=True)
class Fields:
    """F_g (rows, link functions, models; FRAC), F_w (ADMM; FRAC_W) and the sign-comparison field."""

    big: FieldOps
    work: FieldOps
    small: FieldOps
    fine: FieldOps  # the SVM's margin comparisons (MARGIN_FRAC)


def _fields(mpc: Any, plan: GlmPlan) -> Fields:
    return fields_with_big(mpc, glm_field_bits(plan, mpc.options.sec_param))


def fields_with_big(mpc: Any, bits: int) -> Fields:
    """The fit's four fields: F_g of ``bits`` (the plan's), ADMM's F_w, and the two comparison fields."""
    kappa = mpc.options.sec_param
    big = FieldOps(mpc, mpc.SecFxp(bits - FRAC - kappa - 2, FRAC))
    work = FieldOps(mpc, mpc.SecFxp(admm_field_bits(kappa, FRAC_W) - FRAC_W - kappa - 2, FRAC_W))
    small = FieldOps(mpc, mpc.SecInt(compare_field_bits(kappa, compare_bits()) - kappa - 2))
    fine = FieldOps(mpc, mpc.SecInt(compare_field_bits(kappa, compare_bits(MARGIN_FRAC)) - kappa - 2))
    return Fields(big, work, small, fine)


# ---- rows ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Shares in F_g at FRAC: x̃ (m × (d+1), intercept column public 1), y (m,), μ̂ (d,), c (m,) or None."""

    x: ObjectArray
    y: ObjectArray
    mean: ObjectArray
    weights: ObjectArray | None
    positives: ObjectArray  # Σ y (count, at FRAC), shape (1,)
    labels: ObjectArray  # the 0/1 (or count) target; ``y`` is ỹ = 2y − 1 for the SVM


async def _mean_scale(ops: FieldOps, sums: ObjectArray, n: int, bits: int) -> ObjectArray:
    """sums/n at FRAC for sums at FRAC (|sums| < 2^(bits−1)), n public: one truncation."""
    shift = FRAC + max(1, math.ceil(math.log2(n + 1)) + 1)
    factor = round(2.0**shift / n)
    return await ops.trunc((sums * factor) % ops.p, shift, bits + shift - math.floor(math.log2(n)) + 2)


async def _rows(ops: FieldOps, raw: ObjectArray, spec: RegressionSpec, plan: GlmPlan) -> Rows:
    p, m, d = ops.p, plan.n_rows, plan.d
    features = raw[:, list(spec.feature_columns)]
    offsets = np.array([ENCODING_OFFSET + round(mid * 2.0**FRAC_TABLE) for mid in plan.mids], dtype=object)
    factors = np.array([round(2.0 ** (FRAC + NORMALISE_SHIFT - FRAC_TABLE) / h) for h in plan.halves], dtype=object)
    centred_x = (features - offsets) * factors
    x_hat = await ops.trunc(centred_x % p, NORMALISE_SHIFT, FRAC + NORMALISE_SHIFT + 2)
    y = ((raw[:, spec.target] - ENCODING_OFFSET) << (FRAC - FRAC_TABLE)) % p  # exact
    sums = np.concatenate([x_hat.sum(axis=0), [y.sum()]]) % p
    means = await _mean_scale(ops, sums, m, FRAC + _log_rows(plan) + 2)
    mean, share_pos = means[:d], means[d:]
    x = np.concatenate([(x_hat - mean) % p, np.full((m, 1), 1 << FRAC, dtype=object)], axis=1)
    positives = (y.sum() % p) * np.ones(1, dtype=object)
    weights = await _class_weights(ops, y, share_pos, plan) if plan.balanced else None
    model_y = (2 * y - (1 << FRAC)) % p if plan.kind is ModelKind.SVM else y
    return Rows(x, model_y, mean, weights, positives, y)


async def _class_weights(ops: FieldOps, y: ObjectArray, share_pos: ObjectArray, plan: GlmPlan) -> ObjectArray:
    """c_i = m/(2·m₁) if y_i = 1 else m/(2·m₀), from the secret class share m₁/m (both classes assumed present)."""
    p, one = ops.p, 1 << FRAC
    shares = np.array([share_pos[0], (one - share_pos[0]) % p], dtype=object)
    inverse = await reciprocal_unit(ops, shares, plan.n_rows, FRAC)
    half = [(v * (one // 2)) % p for v in inverse]  # c₁, c₀ at frac 2·FRAC
    c1, c0 = await ops.trunc(np.array(half, dtype=object), FRAC, 2 * FRAC + _log_rows(plan) + 2)
    spread = await ops.mul(y, np.full(y.shape, (c1 - c0) % p, dtype=object), FRAC, 2 * FRAC + _log_rows(plan) + 2)
    weights: ObjectArray = (c0 + spread) % p
    return weights


# ---- the outer iterations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """The fixed Jacobi scaling: e (d+1, FRAC; e_b public), e·eᵀ, and the constant parts of every model.

    The rows are never scaled (m·d products): η = X̃·(e∘u) and H_u = (e·eᵀ)∘H, g_u = e∘g are
    scaled on the (d+1)² sums instead (``_next_moving``).
    """

    e: ObjectArray
    outer: ObjectArray  # e·eᵀ ((d+1) × (d+1), FRAC)
    ridge: ObjectArray  # γ∘e² (d+1,), 0 for the intercept
    lam: ObjectArray  # clamped λ∘e (d+1,), 0 for the intercept


async def _sums(
    ops: FieldOps, x: ObjectArray, residual: ObjectArray, weight: ObjectArray | None, plan: GlmPlan
) -> tuple[ObjectArray, ObjectArray]:
    """(g, H) = (X̃ᵀr/m, X̃ᵀdiag(w)X̃/m) at FRAC; ``weight`` None means w = ¼ (public).

    w∘X̃ is reshared without truncation (frac 2F: a degree reduction costs a third of a
    truncation), except its last column: X̃'s intercept column is the public 2^F, so w·2^F is
    already of degree t. The local products X̃ᵀ(w∘X̃) and X̃ᵀr are exact limb products
    (``limbs.cross_product``) at frac 3F and 2F, and two truncations of the (d+1)² + d + 1
    sums give frac F and the division by m.
    """
    p, m = ops.p, plan.n_rows
    d1 = x.shape[1]
    down = 0
    if weight is None:  # the public s₀ = 2^k of the first iteration, by k more (or fewer) bits of truncation
        k = round(math.log2(plan.hessian_start))
        weighted, down = (x << (W_FRAC + max(k, 0))) % p, max(-k, 0)
    else:  # w at W_FRAC
        features = await ops.mul_exact(x[:, :-1], weight[:, None])
        weighted = np.concatenate([features, (weight[:, None] << FRAC) % p], axis=1)
    sums = cross_product(x, np.concatenate([weighted, (residual[:, None] << W_FRAC) % p], axis=1), ops.bits)
    hessian, gradient = sums[:, :d1], sums[:, d1]  # frac 2F + W_FRAC, degree 2t
    lm = _log_rows(plan)
    both = np.concatenate([hessian.reshape(-1), gradient << down]) % p
    totals = await ops.trunc(both, FRAC + W_FRAC + down, sum_bits(lm), degree2t=True)  # Σ at frac F
    scaled = await _mean_scale(ops, totals, m, FRAC + lm + X_BITS + 2)
    return scaled[d1 * d1 :], scaled[: d1 * d1].reshape(d1, d1)


@dataclass(frozen=True)
class Moved:
    """A model made: in F_g, its q and λ in F_w (empty without an L1 part), and (outer iteration 0) the scaling."""

    model: Model
    q_w: ObjectArray
    lam_w: ObjectArray
    scaling: Scaling | None = None


@dataclass(frozen=True)
class MovingModel:
    """A model under way: H and the warm start in F_w (FRAC_W) at once, for ADMM's Newton–Schulz, and the
    rest (``rest``: an awaitable of ``Moved``, run by ``FieldOps.start``) while Newton–Schulz runs. Without
    an L1 part (no ADMM) nothing is moved to F_w (empty arrays)."""

    h_w: ObjectArray
    u_w: ObjectArray
    rest: Any


def _to_work(fields: Fields, x: ObjectArray) -> Any:
    """x (frac 2·FRAC, degree 2t, |x| < 2^(MODEL_BITS−1)) moved to F_w at FRAC_W: one round (a coroutine)."""
    return trunc_convert(
        fields.big, fields.work, x % fields.big.p, 2 * FRAC - FRAC_W, 2 * FRAC + MODEL_BITS, degree2t=True
    )


async def _first_moving(fields: Fields, rows: Rows, plan: GlmPlan) -> MovingModel:
    """Outer iteration 0 at v = 0: g, H, the Jacobi scaling; H_u + Γ_u and q = −g_u go to F_w from their
    unrounded products, and λ∘e is clamped while ADMM's Newton–Schulz runs (``_first_rest``)."""
    ops = fields.big
    p, d = ops.p, plan.d
    one = 1 << FRAC
    if plan.kind is ModelKind.SVM:  # every row active with margin 1: r = 2(0 − ỹ), w = 2
        residual, weight = (-2 * rows.y) % p, None
    elif rows.weights is None:
        residual, weight = (one // 2 - rows.y) % p, None
    else:
        prods = await ops.mul(
            np.concatenate([rows.weights, rows.weights]),
            np.concatenate([(one // 2 - rows.y) % p, np.full(rows.y.shape, 1 << (W_FRAC - 2), dtype=object)]),
            FRAC,
            2 * FRAC + _log_rows(plan) + 2,
        )  # c(½ − y) at FRAC, c/4 at W_FRAC
        residual, weight = prods[: rows.y.size], prods[rows.y.size :]
    gradient, hessian = await _sums(ops, rows.x, residual, weight, plan)
    ridge = ops.fixed(plan.ridge, FRAC)
    diagonal = (np.diag(hessian)[:d] + ridge[:d]) % p
    e_features = await _inverse_sqrt(ops, diagonal, plan)
    e = np.concatenate([e_features, ops.fixed([1 / math.sqrt(plan.hessian_start)], FRAC)])
    outer = await ops.trunc(np.outer(e, e) % p, FRAC, 2 * FRAC + 2 * E_BITS + 2, degree2t=True)
    lam_public = ops.fixed(plan.l1, FRAC)
    d1 = d + 1
    # (e·eᵀ)∘H, e∘g, e∘λ and diag(e·eᵀ)∘γ, unrounded (frac 2·FRAC, degree 2t).
    second = (
        np.concatenate([outer.reshape(-1), e, e, np.diag(outer)])
        * np.concatenate([hessian.reshape(-1), gradient, lam_public, ridge])
    ) % p
    k = d1 * d1
    h_ridge = second[:k].reshape(d1, d1).copy()
    h_ridge[np.diag_indices(d1)] += second[k + 2 * d1 :]
    if not plan.has_l1:  # no ADMM: nothing to move (plain Newton in F_g)
        empty = np.zeros(0, dtype=object)
        return MovingModel(empty, empty, ops.start(_first_rest, fields, e, outer, second, empty, plan))
    moved = await _to_work(fields, np.concatenate([h_ridge.reshape(-1), -second[k : k + d1]]))
    rest = ops.start(_first_rest, fields, e, outer, second, moved[k:], plan)
    return MovingModel(moved[:k].reshape(d1, d1), np.zeros(d1, dtype=object), rest)


async def _first_rest(
    fields: Fields, e: ObjectArray, outer: ObjectArray, second: ObjectArray, q_w: ObjectArray, plan: GlmPlan
) -> Moved:
    """The first model in F_g (one truncation), λ∘e clamped (``clamp_thresholds``) and moved to F_w."""
    ops = fields.big
    p, d1 = ops.p, plan.d + 1
    second = await ops.trunc(second, FRAC, 2 * FRAC + 2 * E_BITS + 4, degree2t=True)
    k = d1 * d1
    h_u = second[:k].reshape(d1, d1)
    g_u = second[k : k + d1]
    lam_u = second[k + d1 : k + 2 * d1]
    ridge_u = second[k + 2 * d1 :]
    lam_u = await clamp_thresholds(ops, lam_u, FRAC, FRAC + E_BITS + math.ceil(math.log2(max(plan.l1) + 2)) + 3)
    lam_w = await trunc_convert(ops, fields.work, lam_u, FRAC - FRAC_W, FRAC + MODEL_BITS) if plan.has_l1 else q_w
    model = _model(ops, h_u, (-g_u) % p, ridge_u, lam_u)
    return Moved(model, q_w, lam_w, Scaling(e, outer, ridge_u, lam_u))


async def _coefficients(ops: FieldOps, scaling: Scaling, u: ObjectArray) -> ObjectArray:
    """v = e∘u (FRAC): the model in the normalised coordinates, for η = X̃·v. One round (d + 1 values)."""
    return await ops.trunc((scaling.e * u) % ops.p, FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)


async def _inverse_sqrt(ops: FieldOps, g: ObjectArray, plan: GlmPlan) -> ObjectArray:
    """e = 1/√g (FRAC) for the first Hessian's diagonal g (d values): Newton y ← y(3 − g·y²)/2 from a
    banded start (``glm_plan.E_BANDS``), two rounds a step.

    b_k = [g < G_j·2^−k] (k = 1 … E_BANDS, G_j = 1/start_j², one batched comparison) are a prefix of
    ones, and y₀ = start_j·2^(K′/2) for K′ ones is a local sum of public multiples of the bits;
    g·y₀² ∈ [1/2, 1), so Newton converges from below (y ≤ 1/√g, as the Jacobi bounds need).
    """
    p = ops.p
    start = np.asarray(plan.newton_start)
    bands = np.array([[2.0**-k / s**2 for s in start] for k in range(1, E_BANDS + 1)])  # (K, d)
    bound = math.ceil(math.log2(float(np.max(bands)) + 2)) + FRAC + 2
    below = await less_than_zero(ops, (g[None, :] - ops.fixed(bands, FRAC)) % p, bound)
    steps = ops.fixed(
        [[s * (2.0 ** (k / 2) - 2.0 ** ((k - 1) / 2)) for s in start] for k in range(1, E_BANDS + 1)], FRAC
    )
    y = (ops.fixed(start, FRAC) + (below * steps).sum(axis=0)) % p
    return await newton_inverse_sqrt_from(ops, g, y, FRAC, E_NEWTON_FROM_BANDS)


def _model(ops: FieldOps, h_u: ObjectArray, q: ObjectArray, ridge_u: ObjectArray, lam_u: ObjectArray) -> Model:
    h = h_u.copy()
    d1 = q.size
    h[np.diag_indices(d1)] = (h[np.diag_indices(d1)] + ridge_u) % ops.p
    return Model(h, q % ops.p, lam_u)


async def _svm_link(fields: Fields, rows: Rows, eta2: ObjectArray) -> tuple[ObjectArray, ObjectArray]:
    """Squared hinge at η: a = [1 − ỹη > 0], r = 2a(η − ỹ) (= −2ỹ·a·(1 − ỹη) as ỹ² = 1), w = 2a."""
    big = fields.big
    p, one = big.p, 1 << FRAC
    random = start_sign_random(fields.fine, eta2.size, MARGIN_FRAC)
    eta = await big.trunc(eta2, FRAC, 2 * FRAC + ETA_BITS + 1, degree2t=True)
    margin = (one - await big.mul(rows.y, eta, FRAC, 2 * FRAC + ETA_BITS + 2)) % p
    _, below = await sign_bits(big, fields.fine, margin, FRAC, resolution=MARGIN_FRAC, random=random)
    active = (1 - below) % p
    residual = await big.mul_exact(active, (2 * (eta - rows.y)) % p)
    return residual, (2 * active << W_FRAC) % p


async def _next_moving(fields: Fields, rows: Rows, scaling: Scaling, u: ObjectArray, plan: GlmPlan) -> MovingModel:
    """The quadratic model at u: the link at η = X̃·(e∘u), the sums g and H, then (e·eᵀ)∘H + Γ_u, u and λ
    to F_w in one round from the unrounded products; g_u, H_u and q = H_u·u − g_u follow in F_g while
    ADMM's Newton–Schulz runs (``_next_rest``)."""
    ops = fields.big
    p = ops.p
    # The sign comparison's random bits take two rounds: the first overlaps v = e∘u's truncation.
    random = None if plan.kind is ModelKind.SVM else start_sign_random(fields.small, rows.x.shape[0])
    eta2 = np.matmul(rows.x, await _coefficients(ops, scaling, u)) % p  # degree 2t, frac 2·FRAC
    if plan.kind is ModelKind.SVM:
        residual, weight = await _svm_link(fields, rows, eta2)
    else:
        prob, weight, _ = await sigmoid(ops, fields.small, eta2, FRAC, W_FRAC, random)
        residual = (prob - rows.y) % p
        if rows.weights is not None:
            n = residual.size
            both = await ops.mul(
                np.concatenate([rows.weights, rows.weights]),
                np.concatenate([residual, weight]),
                FRAC,
                2 * FRAC + _log_rows(plan) + 2,
            )
            residual, weight = both[:n], both[n:]
    gradient, hessian = await _sums(ops, rows.x, residual, weight, plan)
    d1, one = u.size, 1 << FRAC
    products = np.concatenate([(scaling.outer * hessian).reshape(-1), scaling.e * gradient]) % p  # frac 2F
    h_ridge = products[: d1 * d1].reshape(d1, d1).copy()
    h_ridge[np.diag_indices(d1)] += scaling.ridge * one
    if not plan.has_l1:  # no ADMM: nothing to move (plain Newton in F_g)
        empty = np.zeros(0, dtype=object)
        return MovingModel(empty, empty, ops.start(_next_rest, fields, scaling, products, u, empty, plan))
    moved = await _to_work(fields, np.concatenate([h_ridge.reshape(-1), u * one, scaling.lam * one]))
    k = d1 * d1
    rest = ops.start(_next_rest, fields, scaling, products, u, moved[k + d1 :], plan)
    return MovingModel(moved[:k].reshape(d1, d1), moved[k : k + d1], rest)


async def _next_rest(
    fields: Fields, scaling: Scaling, products: ObjectArray, u: ObjectArray, lam_w: ObjectArray, plan: GlmPlan
) -> Moved:
    """(g_u, H_u) = (e∘g, (e·eᵀ)∘H) in F_g (one truncation of the products), q = H_u·u − g_u, and q to F_w.

    Bound: |g_j|, |H_jk| < 2^(lm + 1) (|x̃| ≤ 2, weights ≤ m/2) and e_j < 2^(E_BITS − 1).
    """
    ops = fields.big
    p, d1 = ops.p, u.size
    scaled = await ops.trunc(products, FRAC, 2 * FRAC + 2 * E_BITS + _log_rows(plan) + 3, degree2t=True)
    gradient, hessian = scaled[d1 * d1 :], scaled[: d1 * d1].reshape(d1, d1)
    q = await ops.trunc(
        (np.matmul(hessian, u) - gradient * (1 << FRAC)) % p,
        FRAC,
        2 * FRAC + 9 + math.ceil(math.log2(u.size)) + 3,
        degree2t=True,
    )
    q_w = await trunc_convert(ops, fields.work, q, FRAC - FRAC_W, FRAC + MODEL_BITS) if plan.has_l1 else lam_w
    return Moved(_model(ops, hessian, q, scaling.ridge, scaling.lam), q_w, lam_w)


async def _solve_model(fields: Fields, model: Model, u: ObjectArray, plan: GlmPlan, k: int) -> ObjectArray:
    """The next iterate: ADMM in F_w (warm-started at u), then polishing and selection in F_g."""
    big = fields.big
    if not plan.has_l1:
        return await solve(big, model, plan.ns_solve_iterations, FRAC)
    state = await _admm_state(fields, model, u, plan, k)
    if plan.polish[k]:
        return (await polish_and_select(big, model, state, plan.ns_solve_iterations, FRAC))[0]
    return state.z


async def _solve_and_check(
    fields: Fields,
    moving: MovingModel,
    u: ObjectArray,
    support: AdmmState,
    plan: GlmPlan,
    k: int,
    stopping: bool = True,
) -> tuple[ObjectArray, bool, AdmmState]:
    """The next iterate from a model under way, whether the stopping rule stops after iteration k
    (``_small_step``; only with ``stopping``), and this iteration's ADMM iterate.

    With an L1 part: ADMM warm-started at u; where the plan polishes, the polishing is on the support
    and signs of the previous outer iteration's ADMM iterate (``support``; none at k = 0: the intercept
    only), so it runs beside ADMM (``secure_qp.polish``), and ``secure_qp.select`` keeps the better point
    with the stopping rule's comparisons in its batch.
    """
    big = fields.big
    check = stopping and plan.checks[k]
    if not plan.has_l1:
        moved: Moved = await moving.rest
        new = await solve(big, moved.model, plan.ns_solve_iterations, FRAC)
        return new, check and await _small_step(big, new, u), support
    polishing = big.start(_polish_moving, fields, moving.rest, support, plan, check) if plan.polish[k] else None
    state = await _admm_back(fields, moving.h_w, moving.u_w, _work_parts(moving.rest), plan, k)
    if polishing is None:
        return state.z, check and await _small_step(big, state.z, u), state
    moved = await moving.rest
    new, violations = await select(
        big, moved.model, state, await polishing, FRAC, plan.ns_solve_iterations, u if check else None, STEP_TOLERANCE
    )
    return new, violations is not None and await all_zero(big, violations), state


async def _polish_moving(fields: Fields, rest: Any, support: AdmmState, plan: GlmPlan, checked: bool) -> Polished:
    moved: Moved = await rest
    return await polish(fields.big, moved.model, support, plan.ns_solve_iterations, FRAC, checked)


async def fit_iterations(
    fields: Fields, rows: Rows, plan: GlmPlan, stopping: bool, on_step: Callable[[int, bool], None]
) -> tuple[Scaling, ObjectArray, int]:
    """The outer iterations of one fit: (the scaling, the last iterate u, the iterations used); with
    ``stopping``, the stopping rule; ``on_step(used, stopped)`` after each."""
    zeros = np.zeros(plan.d + 1, dtype=object)
    support = AdmmState(zeros, zeros, zeros, zeros)
    moving = await _first_moving(fields, rows, plan)
    u, _, support = await _solve_and_check(fields, moving, zeros, support, plan, 0, stopping)
    moved: Moved = await moving.rest
    assert moved.scaling is not None
    scaling, used = moved.scaling, 1
    on_step(used, False)
    for k in range(1, plan.outer_iterations):
        moving = await _next_moving(fields, rows, scaling, u, plan)
        u, stop, support = await _solve_and_check(fields, moving, u, support, plan, k, stopping)
        used = k + 1
        on_step(used, stop)
        if stop:
            break
    return scaling, u, used


async def _work_parts(rest: Any) -> tuple[ObjectArray, ObjectArray]:
    moved: Moved = await rest
    return moved.q_w, moved.lam_w


async def _ready(*values: ObjectArray) -> tuple[ObjectArray, ...]:
    return values


async def _admm_state(fields: Fields, model: Model, u: ObjectArray, plan: GlmPlan, k: int) -> AdmmState:
    """ADMM on the model in F_w, warm-started at u; its last iterate back in F_g."""
    big, work = fields.big, fields.work
    d1 = u.size
    moved = await trunc_convert(
        big,
        work,
        np.concatenate([model.h.reshape(-1), model.q, model.lam, u]) % big.p,
        FRAC - FRAC_W,
        FRAC + MODEL_BITS,
    )
    h_w, q_w, lam_w, u_w = moved[: d1 * d1].reshape(d1, d1), moved[d1 * d1 : -2 * d1], moved[-2 * d1 : -d1], moved[-d1:]
    return await _admm_back(fields, h_w, u_w, _ready(q_w, lam_w), plan, k)


async def _admm_back(
    fields: Fields, h_w: ObjectArray, u_w: ObjectArray, later: Any, plan: GlmPlan, k: int
) -> AdmmState:
    """ADMM in F_w (``secure_qp.admm``; ``later``: an awaitable of q and λ in F_w), its last iterate to F_g."""
    big, work = fields.big, fields.work
    d1 = u_w.size
    state = await admm(work, h_w, u_w, later, plan.admm[k], FRAC_W, plan.ns_k_iterations)
    back = await work.convert(
        np.concatenate([state.z, state.z_abs, state.above, state.below]), big, FRAC_W + ADMM_BITS + 1
    )
    z, z_abs, above, below = (back[i * d1 : (i + 1) * d1] for i in range(4))
    shift = 1 << (FRAC - FRAC_W)
    return AdmmState((z * shift) % big.p, (z_abs * shift) % big.p, above, below)


# ---- the fit ---------------------------------------------------------------------------------------


async def secure_fit_glm(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """This party's side of a secure GLM fit; parties 0 and 1 get the result, 2 gets None."""
    table = await agreed_table(mpc, shares, spec)
    n_rows = table.shape[0]
    plan = make_glm_plan(spec, n_rows)
    fields = _fields(mpc, plan)
    big = fields.big
    progress = _Progress(on_progress)
    parties = len(mpc.parties)
    zero = zero_columns(spec, parties)

    progress.report("input", 0, n_rows)
    raw = await share_rows(big, table, zero, lambda done: progress.report("input", done, n_rows))
    progress.report("gram", 0, 1)
    rows = await _rows(big, raw, spec, plan)
    progress.report("gram", 1, 1)

    outer = plan.outer_iterations
    progress.report("iterations", 0, outer)
    scaling, u, used = await fit_iterations(
        fields, rows, plan, True, lambda used, stop: progress.report("iterations", outer if stop else used, outer)
    )

    progress.report("reveal", 0, 1)
    v = await _coefficients(big, scaling, u)
    metric_values = await classification_metrics(
        big, rows.x.shape[0], np.matmul(rows.x, v) % big.p, rows.labels, rows.positives, spec.metrics, FRAC
    )
    opened = await _reveal(big, scaling, rows, u, v, plan, metric_values)
    progress.report("reveal", 1, 1)
    if opened is None:
        return None
    return _result(big, opened, plan, spec, used)


async def _small_step(ops: FieldOps, u: ObjectArray, before: ObjectArray) -> bool:
    """The stopping rule (``glm_plan.STEP_TOLERANCE``): max_j |u_j − before_j| ≤ τ, one opened bit.

    [τ − δ_j < 0] + [τ + δ_j < 0] is 1 exactly when |δ_j| > τ; the sum of these bits is
    opened only as zero or a uniform value (``all_zero``). |δ| < 2^ADMM_BITS (|u| < 2^(ADMM_BITS − 1)).
    """
    tau = ops.fixed(STEP_TOLERANCE, FRAC)
    delta = (u - before) % ops.p
    bits = await less_than_zero(ops, np.concatenate([tau - delta, tau + delta]) % ops.p, FRAC + ADMM_BITS + 3)
    return await all_zero(ops, bits)


async def _reveal(
    ops: FieldOps,
    scaling: Scaling,
    rows: Rows,
    u: ObjectArray,
    v: ObjectArray,
    plan: GlmPlan,
    metric_values: ObjectArray,
) -> ObjectArray | None:
    """Open [e∘u (frac 2F), b̂ (frac 2F), metrics (frac F)] to the owners (v = e∘u rounded, ``_coefficients``)."""
    p, d = ops.p, plan.d
    one = 1 << FRAC
    exact_w = (scaling.e[:d] * u[:d]) % p  # degree 2t, frac 2F
    w_hat = v[:d]
    b_tilde = (scaling.e[d] * u[d]) % p  # e_b public: degree t, frac 2F
    b_hat = (b_tilde - np.dot(w_hat, rows.mean)) % p
    return await ops.output_product(np.concatenate([exact_w, [b_hat], metric_values * one]) % p, OWNERS)


def _result(ops: FieldOps, values: ObjectArray, plan: GlmPlan, spec: RegressionSpec, used: int) -> RegressionResult:
    """Decode, on an owner, the opened [ŵ, b̂, metrics] (all at frac 2F) and map to the original scale."""
    d = plan.d
    floats = ops.to_float(values, 2 * FRAC)
    w, b = plan.to_original([float(v) for v in floats[:d]], float(floats[d]))
    metrics = tuple((name, float(v)) for name, v in zip(spec.metrics, floats[d + 1 :], strict=True))
    return RegressionResult(
        coefficients=tuple(w),
        intercept=b,
        alpha=plan.alpha,
        joined=plan.n_rows,
        iterations=used,
        metrics=metrics,
    )


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime, fit, shut down (as ``secure_regression.run_party``)."""
    return await run_fit(mpc, lambda: secure_fit_glm(mpc, shares, spec, on_progress))
