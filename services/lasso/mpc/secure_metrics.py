"""Quality measures of a fitted model, computed inside MPC (revealed by the caller, to the owners only).

Classification (logistic, SVM), on the join (in-sample), with the predicted class
ŷ_i = [η_i ≥ 0] (scikit-learn's ``predict``: class 1 iff the decision function is
positive; a row with |η| < 2^−24 may count either way):

    TP = Σ ŷ_i·y_i,  P̂ = Σ ŷ_i,  P = Σ y_i,
    accuracy = (2·TP − P̂ − P + m)/m,  precision = TP/P̂,  recall = TP/P,  F1 = 2·TP/(P̂ + P)

(scikit-learn's ``zero_division=0``: a ratio with a zero denominator is 0). The counts are
never opened: only the ratios the study lists. A ratio N/D is (N/2m)·(2m/D') with
D' = D + [D = 0] and 2m/D' by Newton's reciprocal (``secure_functions.reciprocal_unit``).

Regression (linear models, from the normalised moments; see ``linear_metrics``):

    MSE = h_y²·ωᵀĈω (ω = [−ŵ; 1], Ĉ the covariance of [x̂, ŷ]),  R² = 1 − ωᵀĈω/Ĉ_yy,
    adjusted R² = 1 − (1 − R²)·(m − 1)/(m − d − 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import ETA_BITS
from services.lasso.mpc.secure_compare import compare_field_bits, less_than_zero, trunc_convert
from services.lasso.mpc.secure_functions import reciprocal_unit
from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]

#: The predicted class is decided on η rounded to 2^−PREDICT_FRAC.
PREDICT_FRAC = 24
PREDICT_BITS = ETA_BITS + PREDICT_FRAC + 1


def metric_field_bits(kappa: int, frac: int, log_rows: int) -> int:
    """Prime size the classification metrics need in the main field (η at 2·frac, ratios ≤ 2m at frac)."""
    return max(2 * frac + ETA_BITS + 2, 2 * frac + log_rows + 6, frac + 2 * log_rows + frac + 4) + kappa + 3


def _fine_field(ops: FieldOps) -> FieldOps:
    mpc = ops.mpc
    bits = compare_field_bits(ops.kappa, PREDICT_BITS)
    return FieldOps(mpc, mpc.SecInt(bits - ops.kappa - 2))


async def _scale(ops: FieldOps, values: ObjectArray, divisor: int, frac: int, bits: int) -> ObjectArray:
    """values/divisor (frac ``frac``) for values at ``frac`` with |values| < 2^(bits−1), a public divisor."""
    shift = frac + divisor.bit_length() + 1
    factor = round(2.0**shift / divisor)
    return await ops.trunc((values * factor) % ops.p, shift, bits + shift - divisor.bit_length() + 3)


async def ratios(
    ops: FieldOps, numerators: ObjectArray, denominators: ObjectArray, bound: int, frac: int
) -> ObjectArray:
    """N/D (frac) for counts 0 ≤ N ≤ D ≤ bound at ``frac`` (0 where D = 0)."""
    p, one = ops.p, 1 << frac
    log_bound = bound.bit_length() + 1
    empty = await ops.less_than_zero((denominators - one // 2) % p, frac + log_bound + 2)
    safe = (denominators + empty * one) % p
    scaled = await _scale(ops, np.concatenate([numerators, safe]), bound, frac, frac + log_bound + 2)
    n = numerators.size
    inverse = await reciprocal_unit(ops, scaled[n:], bound, frac)
    return await ops.mul(scaled[:n], inverse, frac, 2 * frac + log_bound + 4)


async def classification_metrics(
    ops: FieldOps,
    n_rows: int,
    eta2: ObjectArray,
    y: ObjectArray,
    positives: ObjectArray,
    metrics: Sequence[str],
    frac: int,
) -> ObjectArray:
    """The listed metrics (frac ``frac``, in order) from η·2^(2·frac) (degree 2t), y and P = Σy (frac)."""
    if not metrics:
        return np.zeros(0, dtype=object)
    p, one = ops.p, 1 << frac
    fine = _fine_field(ops)
    coarse = await trunc_convert(ops, fine, eta2, 2 * frac - PREDICT_FRAC, 2 * frac + ETA_BITS + 1, degree2t=True)
    below = await less_than_zero(fine, coarse, PREDICT_BITS)
    predicted = (1 - await fine.convert(below, ops, 2)) % p  # [η ≥ 0]
    tp = await ops.reduce(np.array([np.dot(predicted, y) % p], dtype=object))
    counts = {"tp": tp[0], "predicted": (predicted.sum() * one) % p, "positives": positives[0]}
    m_fixed = n_rows * one
    values: dict[str, ObjectArray] = {}
    wanted = set(metrics)
    if "accuracy" in wanted:
        correct = (2 * counts["tp"] - counts["predicted"] - counts["positives"] + m_fixed) % p
        values["accuracy"] = (
            await _scale(ops, np.array([correct], dtype=object), n_rows, frac, frac + n_rows.bit_length() + 2)
        )[0]
    pairs = {
        "precision": (counts["tp"], counts["predicted"]),
        "recall": (counts["tp"], counts["positives"]),
        "f1": (2 * counts["tp"], counts["predicted"] + counts["positives"]),
    }
    chosen = [name for name in ("precision", "recall", "f1") if name in wanted]
    if chosen:
        numerators = np.array([pairs[name][0] % p for name in chosen], dtype=object)
        denominators = np.array([pairs[name][1] % p for name in chosen], dtype=object)
        for name, value in zip(chosen, await ratios(ops, numerators, denominators, 2 * n_rows, frac), strict=True):
            values[name] = value
    return np.array([values[name] for name in metrics], dtype=object)


#: Smallest Var(y)/h_y² the R² division is sized for (σ_y ≥ 2^−11 of the target's half-range).
TARGET_SPREAD_FLOOR = 2.0**-22


async def linear_metrics(
    ops: FieldOps, cov: ObjectArray, w_hat: ObjectArray, metrics: Sequence[str], frac: int, n_rows: int, d: int
) -> ObjectArray:
    """The listed regression metrics of a linear model from its normalised moments (in-sample).

    ``cov`` is Ĉ of [x̂, ŷ] ((d+1) × (d+1), target last) and ``w_hat`` the normalised
    coefficients, both at ``frac``; with ω = [−ŵ; 1] the residual variance is h_y²·ωᵀĈω
    (the intercept makes the residual mean 0). Returned, in order, at ``frac``: "mse" as
    ωᵀĈω (the caller multiplies by the public h_y²), "r2" = 1 − ωᵀĈω/Ĉ_yy and
    "adjusted_r2" = 1 − (1 − R²)·(m − 1)/(m − d − 1).
    """
    if not metrics:
        return np.zeros(0, dtype=object)
    p, one = ops.p, 1 << frac
    omega = np.concatenate([(-w_hat) % p, [one]])
    first = await ops.trunc((cov @ omega) % p, frac, 2 * frac + 16, degree2t=True)
    quad = await ops.reduce(np.array([np.dot(omega, first) % p], dtype=object))  # frac 2·frac
    quad = await ops.trunc(quad, frac, 2 * frac + 24)
    values: dict[str, object] = {"mse": quad[0]}
    if {"r2", "adjusted_r2"} & set(metrics):
        floor_n = int(1 / TARGET_SPREAD_FLOOR)
        inverse = await reciprocal_unit(ops, np.array([cov[-1, -1]], dtype=object), floor_n, frac)
        ratio = await ops.mul(quad, inverse, frac, 2 * frac + 30)
        r2 = (one - ratio[0]) % p
        factor = (n_rows - 1) / max(n_rows - d - 1, 1)
        adjusted = await ops.mul(ratio, ops.fixed([factor], frac), frac, 2 * frac + 30 + int(factor).bit_length())
        values["r2"], values["adjusted_r2"] = r2, (one - adjusted[0]) % p
    return np.array([values[name] for name in metrics], dtype=object)


def decode_linear_metrics(
    names: Sequence[str], values: npt.NDArray[np.float64], h_y: float
) -> tuple[tuple[str, float], ...]:
    """(name, value) pairs from ``linear_metrics``' opened values (MSE scaled by the public h_y²)."""
    return tuple((name, float(v) * (h_y**2 if name == "mse" else 1.0)) for name, v in zip(names, values, strict=True))
