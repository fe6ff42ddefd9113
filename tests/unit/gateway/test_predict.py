"""Predict with a revealed model: intercept + sum of coefficient * value, with clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskmesh.v1 import lasso_pb2
from services.gateway.predict import PredictError, model_weights, predict


def model(**weights: float) -> lasso_pb2.ModelResult:
    return lasso_pb2.ModelResult(
        coefficients=[lasso_pb2.Coefficient(feature=name, value=value) for name, value in weights.items()],
        intercept=2.0,
        target="hospital_days",
    )


def test_predictions_apply_intercept_and_coefficients_in_order() -> None:
    result = model(bmi=0.5, smoker=3.0, exercise_hours=-0.25)
    records: list[dict[str, float]] = [
        {"bmi": 30.0, "smoker": 1.0, "exercise_hours": 4.0},
        {"exercise_hours": 0, "bmi": 20, "smoker": 0},
    ]
    assert predict(result, records) == [2.0 + 15.0 + 3.0 - 1.0, 2.0 + 10.0]
    assert predict(result, []) == []


def test_a_zero_coefficient_still_requires_its_feature() -> None:
    with pytest.raises(PredictError, match=r"records\[0\]: missing feature\(s\) 'smoker'"):
        predict(model(bmi=0.5, smoker=0.0), [{"bmi": 1.0}])


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"bmi": 1.0, "smoker": 0.0}, {"bmi": 1.0}], r"records\[1\]: missing feature\(s\) 'smoker'"),
        ([{"bmi": 1.0, "smoker": 0.0, "BMI": 2.0}], r"records\[0\]: unknown feature\(s\) 'BMI'"),
        ([{"bmi": math.nan, "smoker": 0.0}], r"records\[0\]: feature 'bmi' is not a finite number"),
        ([{"bmi": math.inf, "smoker": 0.0}], r"not a finite number"),
        ([{"bmi": "30", "smoker": 0.0}], r"feature 'bmi' must be a number"),
        ([{"bmi": None, "smoker": 0.0}], r"must be a number"),
        ([{"bmi": True, "smoker": 0.0}], r"must be a number"),
        ([{"bmi": 1e308, "smoker": 1e308}], r"overflows"),
    ],
)
def test_bad_records_are_refused_without_echoing_values(records: list[dict], message: str) -> None:
    with pytest.raises(PredictError, match=message) as info:
        predict(model(bmi=10.0, smoker=10.0), records)
    assert "30" not in str(info.value) and "nan" not in str(info.value).lower()


@pytest.mark.parametrize(
    "result, message",
    [
        (lasso_pb2.ModelResult(intercept=1.0), "no coefficients"),
        (model(bmi=math.nan), "coefficient for 'bmi' is not finite"),
        (lasso_pb2.ModelResult(coefficients=[lasso_pb2.Coefficient(feature="", value=1.0)]), "no feature name"),
        (lasso_pb2.ModelResult(coefficients=[lasso_pb2.Coefficient(feature="bmi", value=1.0)] * 2), "twice"),
        (
            lasso_pb2.ModelResult(coefficients=[lasso_pb2.Coefficient(feature="bmi", value=1.0)], intercept=math.inf),
            "intercept",
        ),
    ],
)
def test_unusable_models_are_refused(result: lasso_pb2.ModelResult, message: str) -> None:
    with pytest.raises(PredictError, match=message):
        predict(result, [{"bmi": 1.0}])


def test_model_weights_and_error_type() -> None:
    assert model_weights(model(bmi=0.5, smoker=3.0)) == {"bmi": 0.5, "smoker": 3.0}
    assert issubclass(PredictError, ValueError)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(finite, min_size=1, max_size=10), finite, st.lists(st.lists(finite, min_size=10, max_size=10), max_size=5)
)
def test_matches_a_numpy_oracle(weights: list[float], intercept: float, rows: list[list[float]]) -> None:
    names = [f"f{i}" for i in range(len(weights))]
    result = lasso_pb2.ModelResult(
        coefficients=[lasso_pb2.Coefficient(feature=n, value=w) for n, w in zip(names, weights, strict=True)],
        intercept=intercept,
    )
    records = [dict(zip(names, row, strict=False)) for row in rows]  # rows may be longer than the weights
    expected = [intercept + float(np.dot(weights, row[: len(weights)])) for row in rows]
    assert predict(result, records) == pytest.approx(expected, rel=1e-9, abs=1e-3)


def _kind(kind: int, **weights: float) -> lasso_pb2.ModelResult:
    result = model(**weights)
    result.kind = kind
    return result


def test_each_model_kind_applies_its_link() -> None:
    from riskmesh.v1 import common_pb2

    records: list[dict[str, float]] = [{"bmi": 1.0}, {"bmi": -6.0}, {"bmi": -2.0}]  # η = 2.5, −1, 1
    assert predict(_kind(common_pb2.MODEL_KIND_LASSO, bmi=0.5), records[:1]) == [2.5]
    probabilities = predict(_kind(common_pb2.MODEL_KIND_LOGISTIC, bmi=0.5), records)
    assert probabilities == pytest.approx(
        [1 / (1 + math.exp(-2.5)), 1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-1.0))], rel=1e-15
    )
    assert predict(_kind(common_pb2.MODEL_KIND_POISSON, bmi=0.5), records) == pytest.approx(
        [math.exp(2.5), math.exp(-1.0), math.e], rel=1e-15
    )
    assert predict(_kind(common_pb2.MODEL_KIND_SVM, bmi=0.5), records) == [1.0, 0.0, 1.0]


def test_logistic_probabilities_do_not_overflow_and_poisson_overflow_is_an_error() -> None:
    from riskmesh.v1 import common_pb2

    extreme: list[dict[str, float]] = [{"bmi": 1e4}, {"bmi": -1e4}]
    assert predict(_kind(common_pb2.MODEL_KIND_LOGISTIC, bmi=1.0), extreme) == [1.0, 0.0]
    with pytest.raises(PredictError, match="overflows"):
        predict(_kind(common_pb2.MODEL_KIND_POISSON, bmi=1.0), extreme)
