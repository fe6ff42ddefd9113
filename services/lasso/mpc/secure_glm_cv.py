"""K-fold cross-validation for the logistic and SVM fits, choosing the penalty secretly (MPyC).

A wrapper around ``secure_glm``'s fit steps (rows, first step, model solve, next model), which it
calls unchanged:

folds       The joined rows arrive in random order; fold k is the contiguous range
            ``params.fold_bounds`` (as the lasso's and scikit-learn's ``KFold``), so fold
            membership is public and a training set is a public selection of rows.
fits        For every fold × alpha, the ordinary GLM fit on the training rows (its own plan:
            n_train rows, that alpha); then every alpha on the whole join. All public numbers
            (penalties, iteration counts) are those of a public alpha: nothing secret steers them.
loss        On each held-out fold, in MPC: the mean log-loss softplus(η) − yη for logistic
            (softplus(η) = max(η, 0) + log(1 + e^−|η|), the log by Newton on e^ℓ = 1 + v from
            ℓ₀ = v ≥ log(1 + v)), the mean squared hinge max(0, 1 − ỹη)² for the SVM. All fits'
            held-out rows go through one batched evaluation.
choice      curve_a = Σ_k loss_{k,a}; the first minimum by ``secure_regression._argmin_onehot``
            (one-hot shares, never opened); the refits on the whole join are combined as
            Σ_a onehot_a·(e_a∘u_a) — exact products, so L1 zeros stay exact.
reveal      To parties 0 and 1 only: ŵ, b̂, the chosen alpha's index, the CV curve (mean validation
            loss per alpha) when the study reveals it, and the requested metrics: on the whole join
            for the chosen refit (as without CV) and their K-fold estimates at the chosen alpha (the
            mean over the folds of each held-out fold's metric; ``MetricValue.cv_value``).

Cost: (K + 1)·A fits instead of the lasso's one batched CV fit and one refit (the GLM's
penalties enter its first step as public constants; a secret-penalty refit is future work).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import EXP_SQUARINGS, GlmPlan, make_glm_plan
from services.lasso.core.params import ModelKind, RegressionResult, RegressionSpec, fold_bounds
from services.lasso.mpc.runtime import run_fit
from services.lasso.mpc.secure_functions import exp_neg, sign_bits
from services.lasso.mpc.secure_glm import (
    FRAC,
    MARGIN_FRAC,
    Fields,
    Rows,
    _fields,
    _log_rows,
    _mean_scale,
    _rows,
    fit_iterations,
)
from services.lasso.mpc.secure_input import agreed_table, zero_columns
from services.lasso.mpc.secure_metrics import classification_metrics
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_qp import E_BITS
from services.lasso.mpc.secure_regression import _argmin_onehot
from services.lasso.mpc.secure_rows import share_rows

__all__ = ["LOG_STEPS", "cv_result", "fold_spec", "run_party", "secure_fit_glm_cv"]

ObjectArray = npt.NDArray[np.object_]
ProgressCallback = Callable[[str, int, int], None]

OWNERS = [0, 1]
#: Newton steps for log(1 + v), v ∈ (0, e^(1/4)) (the sign is taken on a 2^-3 grid, wrong for |η| < 2^-2): from
#: ℓ₀ = v the error (≤ 0.46) squares and halves each step, below 2^-40 after five.
LOG_STEPS = 6
#: |mean validation loss| < 2^LOSS_BITS (|η| < 2^9: log-loss ≤ 2^9 + 1; squared hinge ≤ (2^9 + 1)²).
LOSS_BITS = 20


async def _fit_u(fields: Fields, rows: Rows, plan: GlmPlan) -> tuple[ObjectArray, ObjectArray]:
    """(e, u) of one GLM fit: the outer iterations of ``secure_glm.secure_fit_glm``, without the stopping rule."""
    scaling, u, _ = await fit_iterations(fields, rows, plan, False, lambda used, stop: None)
    return scaling.e, u


async def _normalised(ops: FieldOps, e: ObjectArray, u: ObjectArray, mean: ObjectArray) -> ObjectArray:
    """[ŵ (frac F), b̂ (frac 2F, degree 2t)] of one fit in the normalised coordinates x̂."""
    p, d = ops.p, mean.size
    w_hat = await ops.trunc((e[:d] * u[:d]) % p, FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)
    b_hat = (e[d] * u[d] - np.dot(w_hat, mean)) % p
    return np.concatenate([w_hat, [b_hat]])


async def _log_one_plus(ops: FieldOps, v: ObjectArray) -> ObjectArray:
    """log(1 + v) at FRAC for v at FRAC in (0, e^(1/4)): Newton ℓ ← ℓ − 1 + (1 + v)·e^(−ℓ) from ℓ₀ = v."""
    p, one = ops.p, 1 << FRAC
    z = (v + one) % p
    ell = v
    for _ in range(LOG_STEPS):
        t = await ops.trunc(ell, EXP_SQUARINGS, FRAC + 3)
        ratio = await ops.mul(z, await exp_neg(ops, t, FRAC), FRAC, 2 * FRAC + 4)
        ell = (ell - one + ratio) % p
    return ell


async def _losses(fields: Fields, eta2: ObjectArray, y: ObjectArray, kind: ModelKind) -> ObjectArray:
    """Per-row validation loss at FRAC from η·2^(2F) (degree 2t) and the model's target y (0/1, or ±1 for the SVM)."""
    big = fields.big
    p, one = big.p, 1 << FRAC
    if kind is ModelKind.SVM:
        eta = await big.trunc(eta2, FRAC, 2 * FRAC + 12, degree2t=True)
        margin = (one - await big.mul(y, eta, FRAC, 2 * FRAC + 12)) % p
        _, below = await sign_bits(big, fields.fine, margin, FRAC, resolution=MARGIN_FRAC)
        square = await big.mul(margin, margin, FRAC, 2 * FRAC + 24)
        return await big.mul_exact((1 - below) % p, square)
    eta, below = await sign_bits(big, fields.small, eta2, FRAC, degree2t=True)
    flip = (1 - 2 * below) % p
    both = await big.mul_exact(np.concatenate([(flip * one) % p, y]), np.concatenate([eta, eta]))  # |η|, y·η at frac 2F
    n = eta.size
    reduced = await big.trunc(both, FRAC, 2 * FRAC + 12)
    absolute, y_eta = reduced[:n], reduced[n:]
    t = await big.trunc(absolute, EXP_SQUARINGS, FRAC + 12)
    log_term = await _log_one_plus(big, await exp_neg(big, t, FRAC))
    half = await big.trunc((absolute + eta) % p, 1, FRAC + 12)  # max(η, 0)
    return (half + log_term - y_eta) % p


def fold_spec(spec: RegressionSpec, alpha: float) -> RegressionSpec:
    """The spec of one fit inside a cross-validation: that alpha, no CV, no metrics."""
    return replace(spec, alphas=(alpha,), cv_folds=0, metrics=())


async def secure_fit_glm_cv(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """This party's side of a cross-validated logistic / SVM fit; parties 0 and 1 get the result, 2 gets None."""
    if not spec.cross_validate or spec.kind not in (ModelKind.LOGISTIC, ModelKind.SVM):
        raise ValueError("secure_fit_glm_cv runs K-fold cross-validation of a logistic or SVM spec")
    report = on_progress or (lambda phase, done, total: None)
    table = await agreed_table(mpc, shares, spec)
    n_rows = table.shape[0]
    alphas = spec.alphas
    plans = [make_glm_plan(fold_spec(spec, a), n_rows) for a in alphas]
    fields = _fields(mpc, plans[0])  # F_g depends on m and d only: large enough for every fold's fit
    big = fields.big
    p, d = big.p, plans[0].d

    report("input", 0, n_rows)
    raw = await share_rows(big, table, zero_columns(spec, len(mpc.parties)), lambda done: report("input", done, n_rows))
    report("gram", 0, 1)
    everything = await _rows(big, raw, spec, plans[0])
    x_hat = (everything.x[:, :d] + everything.mean) % p  # uncentred normalised rows, frac F
    report("gram", 1, 1)

    folds = fold_bounds(n_rows, spec.cv_folds)
    total = (len(folds) + 1) * len(alphas)
    done = 0
    report("iterations", 0, total)
    models: list[ObjectArray] = []  # per fold × alpha: [ŵ, b̂]
    for start, stop in folds:
        train = np.r_[0:start, stop:n_rows]
        for alpha in alphas:
            plan = make_glm_plan(fold_spec(spec, alpha), train.size)
            rows = await _rows(big, raw[train], spec, plan)
            e, u = await _fit_u(fields, rows, plan)
            models.append(await _normalised(big, e, u, rows.mean))
            done += 1
            report("iterations", done, total)
    full: list[tuple[ObjectArray, ObjectArray]] = []
    for plan in plans:
        full.append(await _fit_u(fields, everything, plan))
        done += 1
        report("iterations", done, total)

    report("reveal", 0, 1)
    etas, targets, spans = [], [], []
    for k, (start, stop) in enumerate(folds):
        for a in range(len(alphas)):
            model = models[k * len(alphas) + a]
            etas.append((np.matmul(x_hat[start:stop], model[:d]) + model[d]) % p)
            targets.append(everything.y[start:stop])
            spans.append(stop - start)
    losses = await _losses(fields, np.concatenate(etas), np.concatenate(targets), spec.kind)
    edges = np.cumsum([0, *spans])
    sums = np.array([losses[edges[i] : edges[i + 1]].sum() % p for i in range(len(spans))], dtype=object)
    means = np.concatenate(
        [
            await _mean_scale(big, sums[i : i + len(alphas)], spans[i], FRAC + LOSS_BITS + _log_rows(plans[0]))
            for i in range(0, len(spans), len(alphas))
        ]
    )
    curve = means.reshape(len(folds), len(alphas)).sum(axis=0) % p
    onehot = await _argmin_onehot(big, curve, FRAC + LOSS_BITS + math.ceil(math.log2(len(folds))) + 2)

    estimates = await _fold_metrics(big, spec, folds, etas, everything, onehot)
    # The chosen refit: Σ_a onehot_a·e_a (one exact product), then ŵ = Σ_a (onehot_a·e_a)∘u_a, degree 2t.
    picked = await big.mul_exact(np.repeat(onehot, d + 1), np.concatenate([e for e, _ in full]))
    picked = picked.reshape(len(alphas), d + 1)
    us = np.array([u for _, u in full], dtype=object)
    exact = (picked * us).sum(axis=0) % p  # [e∘u] of the chosen fit, frac 2F
    w_hat = await big.trunc(exact[:d], FRAC, 2 * FRAC + E_BITS + 10, degree2t=True)
    b_hat = (exact[d] - np.dot(w_hat, everything.mean)) % p
    one = 1 << FRAC
    index = (onehot * np.arange(len(alphas), dtype=object)).sum() % p
    opened = [exact[:d], [b_hat, index * one * one]]
    if spec.reveal_cv_curve:
        opened.append(curve * one)
    eta2 = (np.matmul(x_hat, w_hat) + b_hat) % p  # the chosen model on the whole join, frac 2F, degree 2t
    in_sample = await classification_metrics(
        big, n_rows, eta2, everything.labels, everything.positives, spec.metrics, FRAC
    )
    opened += [in_sample * one, estimates * one]
    values = await big.output_product(np.concatenate(opened) % p, OWNERS)
    report("reveal", 1, 1)
    if values is None:
        return None
    return _result(big.to_float(values, 2 * FRAC), plans, spec, len(folds))


async def _fold_metrics(
    ops: FieldOps,
    spec: RegressionSpec,
    folds: list[tuple[int, int]],
    etas: list[ObjectArray],
    rows: Rows,
    onehot: ObjectArray,
) -> ObjectArray:
    """The requested metrics' K-fold estimates at the chosen alpha: Σ_a onehot_a·(1/K)·Σ_k metric_{k,a} (frac F)."""
    if not spec.metrics:
        return np.zeros(0, dtype=object)
    p, count, alphas = ops.p, len(spec.metrics), len(spec.alphas)
    per_fit = []
    for k, (start, stop) in enumerate(folds):
        labels = rows.labels[start:stop]
        positives = np.array([labels.sum() % p], dtype=object)
        for a in range(alphas):
            per_fit.append(
                await classification_metrics(
                    ops, stop - start, etas[k * alphas + a], labels, positives, spec.metrics, FRAC
                )
            )
    table = np.array(per_fit, dtype=object).reshape(len(folds), alphas, count).sum(axis=0) % p  # (A, count)
    chosen = await ops.mul_exact(np.repeat(onehot, count), table.reshape(-1))
    totals = chosen.reshape(alphas, count).sum(axis=0) % p
    return await _mean_scale(ops, totals, len(folds), FRAC + math.ceil(math.log2(len(folds))) + 4)


def _result(
    values: npt.NDArray[np.float64], plans: list[GlmPlan], spec: RegressionSpec, folds: int
) -> RegressionResult:
    """Decode, on an owner, [ŵ, b̂, alpha index, (curve), metrics, their K-fold estimates] (all at frac 2F)."""
    d = plans[0].d
    chosen = plans[int(round(values[d + 1]))]
    return cv_result(chosen, values[: d + 1], values[d + 2 :], spec, folds, estimates_per_fold=1)


def cv_result(
    chosen: GlmPlan,
    model: npt.NDArray[np.float64],
    rest: npt.NDArray[np.float64],
    spec: RegressionSpec,
    folds: int,
    estimates_per_fold: int,
) -> RegressionResult:
    """A GLM CV's result from the chosen alpha's plan, [ŵ, b̂] and the opened tail [(curve summed over the
    folds), metrics, K-fold metric estimates (summed over the folds when ``estimates_per_fold`` is ``folds``)]."""
    d = len(model) - 1
    w, b = chosen.to_original([float(v) for v in model[:d]], float(model[d]))
    curve: tuple[tuple[float, float], ...] = ()
    if spec.reveal_cv_curve:
        curve = tuple((a, float(v) / folds) for a, v in zip(spec.alphas, rest[: len(spec.alphas)], strict=True))
        rest = rest[len(spec.alphas) :]
    count = len(spec.metrics)
    return RegressionResult(
        coefficients=tuple(w),
        intercept=b,
        alpha=chosen.alpha,
        joined=chosen.n_rows,
        iterations=chosen.outer_iterations,
        cv_curve=curve,
        metrics=tuple((name, float(v)) for name, v in zip(spec.metrics, rest[:count], strict=True)),
        cv_metrics=tuple(
            (name, float(v) / estimates_per_fold) for name, v in zip(spec.metrics, rest[count:], strict=True)
        ),
    )


async def run_party(
    mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec, on_progress: ProgressCallback | None = None
) -> RegressionResult | None:
    """Start the runtime, fit with cross-validation, shut down (as ``secure_glm.run_party``)."""
    return await run_fit(mpc, lambda: secure_fit_glm_cv(mpc, shares, spec, on_progress))
