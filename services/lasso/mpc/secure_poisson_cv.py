"""K-fold cross-validation for the Poisson fit, choosing the penalty secretly (MPyC).

The logistic / SVM CV (``secure_glm_cv``) with the Poisson fit's steps (``secure_poisson``):

folds       Fold k is the contiguous range ``params.fold_bounds`` of the randomly ordered join, so a
            training set is a public selection of rows. x̂ and y are made once; each fold centres its
            training rows and takes its own start b₀_k (one comparison of its mean count with the grid).
fits        For every fold × alpha, the ordinary Poisson fit on the training rows (its own plan: n_train
            rows, that alpha, every planned outer iteration: no stopping bits are opened); then every
            alpha on the whole join. All public numbers are those of a public alpha.
loss        On each held-out fold, in the metrics' wider field: the mean Poisson deviance
            (2/n)·Σ(y·log y − y·η + μ − y) with η = b₀_k + s, s = (x̂ − μ̂_k)ᵀŵ + β and μ = κ₀_k·e^s
            (``secure_poisson.group_metrics``: the fit's widened-precision exponential, log y per row by
            Newton from log y_max, computed once for every row). All fits' held-out rows go through one
            batched evaluation.
choice      curve_a = Σ_k deviance_{k,a}; the first minimum by ``secure_regression._argmin_onehot`` (one-hot
            shares, never opened), moved to the fit's field (one conversion); the whole-join refits are
            combined as Σ_a onehot_a·(factor_a∘z_a): exact products, so L1 zeros stay exact.
reveal      To parties 0 and 1 only: ŵ, b̂, the chosen alpha's index, the CV curve (mean held-out deviance
            per alpha) when the study reveals it, and the requested metrics: on the whole join for the
            chosen refit (as without CV) and their K-fold estimates at the chosen alpha (the mean over the
            folds of each held-out fold's metric; ``MetricValue.cv_value``).

The exponential's range on held-out rows: the fit proves s ≤ S_HIGH = log(4m) at the optimum only for the
rows it was fitted on (Σ μ = Σ y). A held-out row has no such bound; its exponential is evaluated with
S_VAL = S_HIGH + VALIDATION_SLACK_BITS·log 2 (a predicted count up to 2^10 times the training rows' bound,
≈ 4·2^10·Σy_train), and s ≤ S_VAL and s > S_VAL − 512 are assumed, not checked, as the fit assumes its
iterates' range (measured in the tests: REGRESSION.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.params import ModelKind, RegressionResult, RegressionSpec, fold_bounds
from services.lasso.core.poisson_plan import PoissonPlan, make_poisson_plan
from services.lasso.mpc.runtime import run_fit
from services.lasso.mpc.secure_glm import FRAC, OWNERS, _log_rows, fields_with_big
from services.lasso.mpc.secure_glm_cv import cv_result, fold_spec
from services.lasso.mpc.secure_input import agreed_table, zero_columns
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_poisson import (
    S_BITS,
    PoissonFit,
    _count_bits,
    _residual_bits,
    _start,
    centred_rows,
    fit_steps,
    group_metrics,
    log_counts,
    metric_ops,
    normalised_rows,
    poisson_field_bits,
)
from services.lasso.mpc.secure_qp import E_BITS
from services.lasso.mpc.secure_regression import _argmin_onehot
from services.lasso.mpc.secure_rows import share_rows

__all__ = ["VALIDATION_SLACK_BITS", "run_party", "secure_fit_poisson_cv", "validation_plan"]

ObjectArray = npt.NDArray[np.object_]
ProgressCallback = Callable[[str, int, int], None]

#: Held-out rows' exponential: s ≤ S_HIGH + VALIDATION_SLACK_BITS·log 2 (μ up to 2^10 × the fit's bound).
VALIDATION_SLACK_BITS = 10


def validation_plan(plan: PoissonPlan) -> PoissonPlan:
    """The whole join's plan with the held-out rows' exponential range S_VAL (the metrics' bounds follow)."""
    return replace(plan, s_high=plan.s_high + VALIDATION_SLACK_BITS * math.log(2))


def _no_step(used: int, stopped: bool) -> None:
    """Progress is counted per fit, not per outer iteration."""


async def secure_fit_poisson_cv(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """This party's side of a cross-validated Poisson fit; parties 0 and 1 get the result, 2 gets None."""
    if not spec.cross_validate or spec.kind is not ModelKind.POISSON:
        raise ValueError("secure_fit_poisson_cv runs K-fold cross-validation of a Poisson spec")
    report = on_progress or (lambda phase, done, total: None)
    table = await agreed_table(mpc, shares, spec)
    n_rows = table.shape[0]
    alphas = spec.alphas
    plans = [make_poisson_plan(fold_spec(spec, a), n_rows) for a in alphas]
    # F_g grows with m and the penalties: the whole join's plans bound every fold's.
    fields = fields_with_big(mpc, max(poisson_field_bits(plan, mpc.options.sec_param) for plan in plans))
    big = fields.big
    p, d = big.p, plans[0].glm.d

    report("input", 0, n_rows)
    raw = await share_rows(big, table, zero_columns(spec, len(mpc.parties)), lambda done: report("input", done, n_rows))
    report("gram", 0, 1)
    x_hat, y = await normalised_rows(big, raw, spec, plans[0])
    everything = await centred_rows(big, x_hat, y, plans[0])
    b0_all, kappa_all, inverse_all = await _start(big, everything.y_mean, plans[0])
    report("gram", 1, 1)

    folds = fold_bounds(n_rows, spec.cv_folds)
    total = (len(folds) + 1) * len(alphas)
    done = 0
    report("iterations", 0, total)
    held_out: list[ObjectArray] = []  # per fold × alpha: s·2^(2F) on the held-out rows (degree 2t)
    starts: list[Any] = []  # per fold: b₀_k, κ₀_k
    for start, stop in folds:
        train = np.r_[0:start, stop:n_rows]
        fold_plans = [make_poisson_plan(fold_spec(spec, a), train.size) for a in alphas]
        rows = await centred_rows(big, x_hat[train], y[train], fold_plans[0])
        b0, kappa, inverse = await _start(big, rows.y_mean, fold_plans[0])
        starts += [b0, kappa]
        fits = []
        for plan in fold_plans:
            fits.append(await fit_steps(fields, rows, inverse, plan, False, _no_step))
            done += 1
            report("iterations", done, total)
        fold_w = await _coefficients(big, fits)
        centred = (x_hat[start:stop] - rows.mean) % p
        held_out += [(np.matmul(centred, w) + fit.u[d] * (1 << FRAC)) % p for w, fit in zip(fold_w, fits, strict=True)]
    full: list[PoissonFit] = []
    for plan in plans:
        full.append(await fit_steps(fields, everything, inverse_all, plan, False, _no_step))
        done += 1
        report("iterations", done, total)

    report("reveal", 0, 1)
    check = validation_plan(plans[0])
    wide = metric_ops(mpc, check)
    s = await big.trunc(np.concatenate(held_out), FRAC, 2 * FRAC + S_BITS + 1, degree2t=True)
    moved = await big.convert(
        np.concatenate([s, y, np.array([*starts, b0_all, kappa_all], dtype=object)]) % p,
        wide,
        FRAC + max(S_BITS, _count_bits(check)) + 4,
    )
    s_w, y_w = moved[: s.size], moved[s.size : s.size + n_rows]
    fold_starts = moved[s.size + n_rows : -2].reshape(len(folds), 2)
    b0_w, kappa_w = moved[-2:]
    ell = await log_counts(wide, y_w, check)
    curve, estimates, onehot = await _cross_validate(wide, spec, folds, s_w, y_w, ell, fold_starts, check)

    # The chosen refit: Σ_a onehot_a·[factor_a, u_b,a] (one exact product), ŵ = Σ_a (onehot_a·factor_a)∘z_a.
    chosen = await wide.convert(onehot, big, 2)
    parts = np.concatenate([np.concatenate([fit.factor, [fit.u[d]]]) for fit in full])
    picked = (await big.mul_exact(np.repeat(chosen, d + 2), parts)).reshape(len(alphas), d + 2)
    exact = (picked[:, :d] * np.array([fit.z[:d] for fit in full], dtype=object)).sum(axis=0) % p  # frac 2F
    u_b = picked[:, d + 1].sum() % p
    w_hat = await big.trunc(exact, FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)
    b_hat = ((b0_all + u_b) * (1 << FRAC) - np.dot(w_hat, everything.mean)) % p
    in_sample = np.zeros(0, dtype=object)
    if spec.metrics:
        s_all = await big.trunc(
            (np.matmul(everything.x[:, :d], w_hat) + u_b * (1 << FRAC)) % p, FRAC, 2 * FRAC + S_BITS + 1, degree2t=True
        )
        s_all_w = await big.convert(s_all, wide, FRAC + S_BITS + 4)
        in_sample = (
            await group_metrics(
                wide,
                s_all_w,
                y_w,
                ell,
                np.array([b0_w], dtype=object),
                np.array([kappa_w], dtype=object),
                [n_rows],
                spec.metrics,
                check,
            )
        )[0]
    index = (onehot * np.arange(len(alphas), dtype=object)).sum() % wide.p
    opened = [np.array([index << FRAC], dtype=object), in_sample, estimates]
    if spec.reveal_cv_curve:
        opened.insert(1, curve)
    quality = await wide.output(np.concatenate(opened) % wide.p, OWNERS)
    model = await big.output_product(np.concatenate([exact, [b_hat]]) % p, OWNERS)
    report("reveal", 1, 1)
    if quality is None or model is None:
        return None
    return _result(big.to_float(model, 2 * FRAC), wide.to_float(quality, FRAC), plans, spec, len(folds))


async def _coefficients(big: FieldOps, fits: list[PoissonFit]) -> list[ObjectArray]:
    """ŵ at FRAC of each fit (one truncation for all)."""
    d = fits[0].z.size - 1
    exact = np.concatenate([(fit.factor[:d] * fit.z[:d]) % big.p for fit in fits])
    w_hat = await big.trunc(exact, FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)
    return [w_hat[i * d : (i + 1) * d] for i in range(len(fits))]


async def _cross_validate(
    wide: FieldOps,
    spec: RegressionSpec,
    folds: list[tuple[int, int]],
    s: ObjectArray,
    y: ObjectArray,
    ell: ObjectArray,
    starts: ObjectArray,
    plan: PoissonPlan,
) -> tuple[ObjectArray, ObjectArray, ObjectArray]:
    """(curve_a = Σ_k deviance_{k,a}, Σ_k metric_{k,a} of the requested metrics at the chosen alpha, the
    one-hot choice), all at FRAC in the metrics' field, from s on every fold × alpha's held-out rows."""
    p, alphas, count = wide.p, len(spec.alphas), len(folds)
    names = ("deviance", *(name for name in spec.metrics if name != "deviance"))
    rows = [np.arange(start, stop) for start, stop in folds for _ in range(alphas)]
    sizes = [r.size for r in rows]
    group = np.repeat(np.arange(count), alphas)  # the fold of each fit
    values = await group_metrics(
        wide,
        s,
        y[np.concatenate(rows)],
        ell[np.concatenate(rows)],
        starts[group, 0],
        starts[group, 1],
        sizes,
        names,
        plan,
    )  # (K·A, names)
    table = values.reshape(count, alphas, len(names)).sum(axis=0) % p  # (A, names): Σ over the folds
    lm, rbits = _log_rows(plan.glm), _residual_bits(plan)
    folds_bits = math.ceil(math.log2(count)) + 1
    curve = table[:, 0]
    onehot = await _argmin_onehot(wide, curve, FRAC + lm + rbits + S_BITS + 6 + folds_bits)
    if not spec.metrics:
        return curve, np.zeros(0, dtype=object), onehot
    requested = table[:, [names.index(name) for name in spec.metrics]]
    selected = await wide.mul_exact(np.repeat(onehot, len(spec.metrics)), requested.reshape(-1))
    # Σ_k metric_{k,chosen}: the owners divide by K in the clear (as the curve), so no wide truncation is needed.
    return curve, selected.reshape(alphas, len(spec.metrics)).sum(axis=0) % p, onehot


def _result(
    model: npt.NDArray[np.float64],
    quality: npt.NDArray[np.float64],
    plans: list[PoissonPlan],
    spec: RegressionSpec,
    folds: int,
) -> RegressionResult:
    """Decode, on an owner, [ŵ, b̂] (frac 2F) and [alpha index, (curve), metrics, K × their K-fold estimates]
    (frac F)."""
    chosen = plans[int(round(quality[0]))].glm
    return cv_result(chosen, model[: plans[0].glm.d + 1], quality[1:], spec, folds, estimates_per_fold=folds)


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime, fit with cross-validation, shut down (as ``secure_poisson.run_party``)."""
    return await run_fit(mpc, lambda: secure_fit_poisson_cv(mpc, shares, spec, on_progress))
