"""Apply a revealed model to records the caller supplies (local only, no MPC).

    η = intercept + sum_j  w_j * x_j

with the coefficients and intercept on the features' original scale, as `ModelResult`
reports them; the prediction is what fits the model's kind (`ModelResult.kind`):

    linear (lasso, elastic net, ridge; unset in results of older runs):  η
    logistic:  the probability of class 1, 1/(1 + e^−η)
    Poisson:   the expected count e^η
    SVM:       the class, 1 if η > 0 else 0 (scikit-learn's decision rule)

Every record must give exactly the model's features: a missing feature
would silently predict with 0, an unknown one usually means a misspelt column, so both
are errors. Error messages name the record index and the feature, never a value (the
caller's records are patient data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from riskmesh.v1 import common_pb2, lasso_pb2


class PredictError(ValueError):
    """The model or a record cannot be used (the message says which and why)."""


def model_weights(result: lasso_pb2.ModelResult) -> dict[str, float]:
    """Coefficients by feature name, after checking that the model itself is usable."""
    if not result.coefficients:
        raise PredictError("the model has no coefficients")
    weights: dict[str, float] = {}
    for i, coefficient in enumerate(result.coefficients):
        if not coefficient.feature:
            raise PredictError(f"the model's coefficient {i} has no feature name")
        if coefficient.feature in weights:
            raise PredictError(f"the model names feature {coefficient.feature!r} twice")
        if not math.isfinite(coefficient.value):
            raise PredictError(f"the model's coefficient for {coefficient.feature!r} is not finite")
        weights[coefficient.feature] = coefficient.value
    if not math.isfinite(result.intercept):
        raise PredictError("the model's intercept is not finite")
    return weights


def predict(result: lasso_pb2.ModelResult, records: Sequence[Mapping[str, float]]) -> list[float]:
    """One prediction per record, in order; `PredictError` for the first bad record."""
    weights = model_weights(result)
    expected = set(weights)
    out: list[float] = []
    for index, record in enumerate(records):
        given = set(record)
        missing = sorted(expected - given)
        if missing:
            raise PredictError(f"records[{index}]: missing feature(s) {', '.join(map(repr, missing))}")
        unknown = sorted(given - expected)
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise PredictError(f"records[{index}]: unknown feature(s) {names}; the model uses {sorted(expected)}")
        terms = [result.intercept]
        for name, weight in weights.items():
            value = record[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PredictError(f"records[{index}]: feature {name!r} must be a number")
            if not math.isfinite(value):
                raise PredictError(f"records[{index}]: feature {name!r} is not a finite number")
            terms.append(weight * float(value))
        prediction = apply_link(result.kind, math.fsum(terms))
        if not math.isfinite(prediction):
            raise PredictError(f"records[{index}]: the prediction overflows")
        out.append(prediction)
    return out


def apply_link(kind: int, eta: float) -> float:
    """The prediction of a model of `kind` for the linear predictor η (inf when e^η overflows)."""
    if kind == common_pb2.MODEL_KIND_LOGISTIC:
        return 1 / (1 + math.exp(-eta)) if eta >= 0 else math.exp(eta) / (1 + math.exp(eta))
    if kind == common_pb2.MODEL_KIND_POISSON:
        return math.exp(eta) if eta < 709 else math.inf
    if kind == common_pb2.MODEL_KIND_SVM:
        return 1.0 if eta > 0 else 0.0
    return eta
