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
            one call) per iteration, in segments; at every public checkpoint
            polishing on the detected support, a secure choice of the better
            point and the convergence certificate (one opened bit: every fit
            of the batch certified); stop there or restart ADMM from the
            chosen point. Cross-validation fits all folds ×
            alphas as one batch, computes each validation MSE from the
            validation moments, averages per alpha, picks the best alpha with
            secure comparisons (one-hot, never opened to the helper) and refits
            on the whole join with it.
reveal      ŵ and b̂ — and u (the standardised coefficients) when the study
            standardises and names them, the alpha index and the CV curve when it
            cross-validates and reveals the curve — are opened to parties 0
            and 1 only; the public affine map back to the original scale is
            applied in the clear. Nothing else is ever opened: every other
            opening is of a value masked by (pseudo)random shares.

Fields. Gram and everything before the iterations run in a large prime field
F_in (fixed point with ``FRAC_IN`` = 40 fractional bits; its size follows from
m and the declared ranges so that N never wraps); ADMM runs in a smaller field
F_w (``FRAC_W`` = 32) where comparisons — 80–90% of an iteration — are cheaper.
Values move between them by one masked opening (``FieldOps.convert``).

Assumptions (documented limits): every |ADMM quantity| < 2^8 in the
normalised units (thresholds are clamped to 2^6), |ŵ_j| < 2^10, σ_j/h_j ≥ 2^−11 (feature
spread vs declared half-range). Whether the fit reached the optimum is not
assumed: the certificate says it (``RegressionResult.converged``).

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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.params import RegressionResult, RegressionSpec
from services.lasso.core.plan import (
    ADMM_RHO,
    CERTIFICATE_TOLERANCE,
    NEWTON_ITERATIONS,
    AlphaPlan,
    SolverPlan,
    make_plan,
)
from services.lasso.mpc.runtime import run_fit
from services.lasso.mpc.secure_gram import FRAC_IN, FRAC_TABLE, Moments, gram_bits, moments
from services.lasso.mpc.secure_input import agreed_table, share_and_multiply, zero_columns
from services.lasso.mpc.secure_metrics import decode_linear_metrics, linear_metrics
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_solver import (
    ADMM_X_BITS,
    E_BITS,
    FRAC_U,
    FRAC_W,
    KAPPA_CLAMP,
    W_HAT_BITS,
    Fields,
    Params,
    bounds,
    clamp_threshold,
    fit_batch,
    l1_max,
)
from services.lasso.mpc.secure_threshold import threshold_field_bits

__all__ = ["FRAC_TABLE", "ProgressCallback", "run_party", "secure_fit"]

ObjectArray = npt.NDArray[np.object_]
ProgressCallback = Callable[[str, int, int], None]

OWNERS = [0, 1]


@dataclass
class _Progress:
    callback: ProgressCallback | None
    done: int = 0
    total: int = 0

    def report(self, phase: str, done: int, total: int) -> None:
        if self.callback is not None:
            self.callback(phase, done, total)

    def step(self, count: int) -> None:
        self.done += count
        self.report("iterations", self.done, self.total)


def _mse_bits(d: int) -> int:
    """Bits of ω∘(Ĉω) and (δᵀω)² at frac 80 for |ŵ| < 2^(W_HAT_BITS−1), |Ĉ| ≤ 1, |δ| ≤ 2."""
    return 2 * FRAC_IN + 2 * W_HAT_BITS + 2 * math.ceil(math.log2(d + 1)) + 4


def _field_bits(plan: SolverPlan, kappa: int) -> tuple[int, int]:
    """Prime sizes (bits) of F_in and F_w for this plan (see the bounds at each call)."""
    lam_bits = 2 * FRAC_IN + E_BITS + math.ceil(math.log2(l1_max(plan))) + 2
    cv_bits = _mse_bits(plan.d) if plan.folds else 0
    cap_in = max(gram_bits(plan), lam_bits, cv_bits, 116)  # 116: Newton's y² at frac 80
    return max(cap_in + kappa + 3, bounds(plan).field_bits(kappa)), threshold_field_bits(kappa, FRAC_W, ADMM_X_BITS)


def _fields(mpc: Any, plan: SolverPlan) -> Fields:
    kappa = mpc.options.sec_param
    bits_in, bits_w = _field_bits(plan, kappa)
    # MPyC picks a prime of l + f + κ + 2 bits for SecFxp(l, f).
    stype_in = mpc.SecFxp(bits_in - FRAC_TABLE - kappa - 2, FRAC_TABLE)
    stype_w = mpc.SecFxp(bits_w - FRAC_W - kappa - 2, FRAC_W)
    return Fields(FieldOps(mpc, stype_in), FieldOps(mpc, stype_w))


# ---- parameters, cross-validation, reveal ---------------------------------------------------------


def _public_params(ops: FieldOps, plans: Sequence[AlphaPlan], standardize: bool) -> Params:
    """Constants of the given alphas (one problem each) as public 'shares'."""
    clamp = ADMM_RHO * KAPPA_CLAMP
    gamma = ops.fixed([ap.diag_shift for ap in plans], FRAC_IN)
    l1 = ops.fixed([[min(v, clamp) if standardize else v for v in ap.l1_public] for ap in plans], FRAC_IN)
    scaled = standardize and any(ap.diag_scale != 1 for ap in plans)
    offdiag = ops.fixed([1 / ap.diag_scale for ap in plans], FRAC_IN) if scaled else None
    w_scale = ops.fixed([1 / math.sqrt(ap.diag_scale) for ap in plans], FRAC_IN) if scaled else None
    start = np.array([ap.newton_start for ap in plans], dtype=np.float64)
    limits = None
    if not standardize:
        limits = ops.fixed(
            [[clamp_threshold(v, g) for v, g in zip(ap.l1_public, ap.diag_shift, strict=True)] for ap in plans],
            FRAC_IN,
        )
    return Params(gamma, l1, offdiag, w_scale, start, limits)


def _chosen_params(ops: FieldOps, plans: Sequence[AlphaPlan], onehot: ObjectArray, standardize: bool) -> Params:
    """Constants of the secretly chosen alpha: Σ_a onehot_a·constant_a (local, exact)."""
    table = _public_params(ops, plans, standardize)

    def pick(values: ObjectArray) -> ObjectArray:
        weights = onehot.reshape((-1,) + (1,) * (values.ndim - 1))
        return (weights * values).sum(axis=0, keepdims=True) % ops.p

    offdiag = None if table.offdiag is None else pick(table.offdiag)
    w_scale = None if table.w_scale is None else pick(table.w_scale)
    start = table.start.min(axis=0, keepdims=True)  # ≤ every alpha's start: still below 1/√G_jj
    clamp = None if table.clamp is None else pick(table.clamp)
    return Params(pick(table.gamma), pick(table.l1), offdiag, w_scale, start, clamp)


async def _validation_mse(ops: FieldOps, w_hat: ObjectArray, train: Moments, valid: Moments) -> ObjectArray:
    """(B,) shares of ωᵀĈ_valid ω + (δᵀω)², ω = [−ŵ; 1], δ = μ̂_valid − μ̂_train (frac 40)."""
    p, f = ops.p, FRAC_IN
    batch = w_hat.shape[0]
    omega = np.concatenate([(-w_hat) % p, np.full((batch, 1), 1 << f, dtype=object)], axis=1)
    delta = (valid.mean - train.mean) % p
    c_omega = np.einsum("bij,bj->bi", valid.cov, omega)
    d_omega = np.einsum("bj,bj->b", delta, omega)
    d1 = w_hat.shape[1] + 1
    first = await ops.trunc(
        np.concatenate([c_omega.ravel(), d_omega]) % p,
        f,
        2 * f + W_HAT_BITS + math.ceil(math.log2(d1)) + 3,
        degree2t=True,
    )
    c_omega, d_omega = first[: c_omega.size].reshape(c_omega.shape), first[c_omega.size :]
    second = await ops.mul(
        np.concatenate([omega.ravel(), d_omega]), np.concatenate([c_omega.ravel(), d_omega]), f, _mse_bits(d1 - 1)
    )
    quad = second[: omega.size].reshape(omega.shape).sum(axis=1)
    return (quad + second[omega.size :]) % p


async def _argmin_onehot(ops: FieldOps, values: ObjectArray, bits: int) -> ObjectArray:
    """One-hot shares of the first index of the minimum: every pair compared in one batched
    comparison, then onehot_a = Π_{b≠a} [a beats b] (a < b beats b iff v_a ≤ v_b) by a product
    tree, ⌈log₂(count − 1)⌉ rounds (instead of one comparison and one product per alpha in turn)."""
    count, p = len(values), ops.p
    if count == 1:
        return np.ones(1, dtype=object)
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
    later_less = await ops.less_than_zero(np.array([(values[b] - values[a]) % p for a, b in pairs], dtype=object), bits)
    beats: list[list[Any]] = [[] for _ in range(count)]
    for (a, b), bit in zip(pairs, later_less, strict=True):
        beats[a].append((1 - bit) % p)  # v_a ≤ v_b
        beats[b].append(bit)  # v_b < v_a
    factors = np.array(beats, dtype=object)  # (count, count − 1)
    while factors.shape[1] > 1:
        half = factors.shape[1] // 2
        products = await ops.mul_exact(factors[:, :half].ravel(), factors[:, half : 2 * half].ravel())
        factors = np.concatenate([products.reshape(count, half), factors[:, 2 * half :]], axis=1)
    return factors[:, 0] % p


def _stage_steps(plan: SolverPlan) -> int:
    """Progress units of one batch run to the plan's maximum (a certified run stops earlier)."""
    admm = plan.ns_k_iterations + plan.admm_iterations if plan.has_l1 else 0
    return NEWTON_ITERATIONS + admm + len(plan.checkpoints) * plan.ns_polish_iterations


async def secure_fit(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Run this party's side of the secure regression; parties 0 and 1 get the result, 2 gets None.

    ``mpc`` is a started MPyC runtime (all parties call this with the same
    ``spec``); ``shares`` is this party's m × c integer share matrix, columns as
    ``spec.ranges``. ``on_progress(phase, done, total)`` receives counts only.
    """
    table = await agreed_table(mpc, shares, spec)
    rows = table.shape[0]
    plan = make_plan(spec, rows)
    fields = _fields(mpc, plan)
    inp = fields.inp
    progress = _Progress(on_progress)
    progress.total = _stage_steps(plan) * (2 if spec.cross_validate else 1)
    parties = len(mpc.parties)
    zero = zero_columns(spec, parties)

    progress.report("input", 0, rows)
    folds = list(plan.folds) or [(0, rows)]
    sums = await share_and_multiply(inp, table, folds, zero, lambda done: progress.report("input", done, rows))
    progress.report("gram", 0, 1)
    mom = await moments(inp, sums, plan, [*spec.feature_columns, spec.target])
    progress.report("gram", 1, 1)

    progress.report("iterations", 0, progress.total)
    onehot: ObjectArray | None = None
    curve: ObjectArray | None = None
    certified = True
    if spec.cross_validate:
        folds_n, alphas_n = len(plan.folds), len(plan.alphas)
        train_idx = [1 + 2 * k for k in range(folds_n) for _ in range(alphas_n)]
        valid_idx = [2 + 2 * k for k in range(folds_n) for _ in range(alphas_n)]
        params = _public_params(inp, list(plan.alphas) * folds_n, spec.standardize)
        fit = await fit_batch(fields, mom.cov[train_idx], params, plan, not spec.standardize, progress.step)
        certified = fit.certified  # every fold × alpha fit the curve uses
        train = Moments(mom.cov[train_idx], mom.mean[train_idx])
        valid = Moments(mom.cov[valid_idx], mom.mean[valid_idx])
        mse = await _validation_mse(inp, fit.w_hat, train, valid)
        curve = mse.reshape(folds_n, alphas_n).sum(axis=0) % inp.p
        onehot = await _argmin_onehot(inp, curve, FRAC_IN + 2 * W_HAT_BITS + 20)
        final = _chosen_params(inp, plan.alphas, onehot, spec.standardize)
    else:
        final = _public_params(inp, plan.alphas, spec.standardize)
    fit = await fit_batch(fields, mom.cov[:1], final, plan, not spec.standardize, progress.step)
    certified = certified and fit.certified
    progress.report("iterations", progress.total, progress.total)

    progress.report("reveal", 0, 1)
    mean = mom.mean[0]
    intercept_terms = await inp.mul(fit.w_hat[0], mean[:-1], FRAC_IN, 2 * FRAC_IN + W_HAT_BITS + 2)
    b_hat = (mean[-1] - intercept_terms.sum()) % inp.p
    opened = [np.array([b_hat], dtype=object)]
    reveal_u = spec.standardize and spec.reveal_standardized  # u with ŵ reveals σ_j: only when the study names it
    if reveal_u:  # u is the standardised fit
        opened += [fit.u[0] * (1 << FRAC_IN)]  # frac 88, as ŵ below
    if onehot is not None:
        index = (onehot * np.arange(len(onehot), dtype=object)).sum() << FRAC_IN
        opened += [np.array([index], dtype=object)]
        if spec.reveal_cv_curve and curve is not None:
            opened += [curve]
    opened += [await linear_metrics(inp, mom.cov[0], fit.w_hat[0], spec.metrics, FRAC_IN, rows, plan.d)]
    exact_w = fit.e[0] * fit.u[0]  # degree 2t, frac 88: no rounding, exact zeros
    values = await inp.output_product(np.concatenate([exact_w, *opened]) % inp.p, OWNERS)
    progress.report("reveal", 1, 1)
    if values is None:
        return None
    d, count = plan.d, len(spec.metrics)
    precise = d + (d if reveal_u else 0)  # ŵ and u at frac 88, then b̂ at frac 40
    w_hat = inp.to_float(values[:d], FRAC_IN + FRAC_U)
    u = inp.to_float(values[d + 1 : d + 1 + d], FRAC_IN + FRAC_U) if reveal_u else None
    rest = inp.to_float(np.concatenate([values[d : d + 1], values[1 + precise :]]), FRAC_IN)
    result = _result(w_hat, u, rest[: rest.size - count], plan, spec, fit.iterations, certified)
    return replace(result, metrics=decode_linear_metrics(spec.metrics, rest[rest.size - count :], plan.h_y))


def _result(
    w_hat: npt.NDArray[np.float64],
    u: npt.NDArray[np.float64] | None,
    values: npt.NDArray[np.float64],
    plan: SolverPlan,
    spec: RegressionSpec,
    iterations: int,
    certified: bool,
) -> RegressionResult:
    """Decode, on an owner, the opened ŵ, u (if standardised) and [b̂, (alpha index, (CV sums))]."""
    b_hat = float(values[0])
    rest = values[1:]
    chosen = plan.alphas[int(round(rest[0]))] if spec.cross_validate else plan.alphas[0]
    w, b = plan.to_original(list(w_hat), b_hat)
    standardized = None
    if u is not None:
        standardized = tuple(float(v) for v in plan.h_y * u / math.sqrt(chosen.diag_scale))
    cv_curve: tuple[tuple[float, float], ...] = ()
    if spec.cross_validate and spec.reveal_cv_curve:
        scale = plan.h_y**2 / len(plan.folds)
        cv_curve = tuple((ap.alpha, float(v) * scale) for ap, v in zip(plan.alphas, rest[1:], strict=True))
    return RegressionResult(
        coefficients=tuple(float(v) for v in w),
        intercept=b,
        alpha=chosen.alpha,
        joined=plan.n_rows,
        iterations=iterations,
        standardized_coefficients=standardized,
        cv_curve=cv_curve,
        converged=certified,
        certified_gap=CERTIFICATE_TOLERANCE if certified else None,
    )


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime (``mpc.start``, which a transport may replace), fit, shut down.

    Call as ``mpc.run(run_party(mpc, shares, spec))`` in a process that owns the runtime.
    """
    return await run_fit(mpc, lambda: secure_fit(mpc, shares, spec, on_progress))
