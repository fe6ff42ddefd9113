"""The glue between the study spec / ModelResult and the regression core."""

from __future__ import annotations

from dataclasses import replace

import pytest

from riskmesh.v1 import common_pb2
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.params import ModelKind, RegressionResult
from services.lasso.worker.lasso_program import check_encoding, check_joined, model_result, regression_spec
from services.lasso.worker.program import ProgramError
from tests.unit.gateway.specs import make_spec


def test_regression_spec_follows_the_study():
    spec = make_spec()
    spec.model.CopyFrom(
        common_pb2.ModelSpec(
            kind=common_pb2.MODEL_KIND_ELASTIC_NET,
            alphas=[0.1, 1.0],
            l1_ratio=0.5,
            cv_folds=3,
            standardize=True,
            iterations=77,
        )
    )
    spec.reveal.cv_curve = True
    r = regression_spec(spec)
    assert r.kind is ModelKind.ELASTIC_NET and r.alphas == (0.1, 1.0) and r.l1_ratio == 0.5
    assert r.cv_folds == 3 and r.standardize and r.iterations == 77 and r.reveal_cv_curve
    assert r.target == 5 and [(c.min, c.max) for c in r.ranges][-1] == (0, 365)
    assert r.column_owners == (0, 0, 1, 1, 1, 0)


def test_a_single_fold_means_no_cross_validation():
    spec = make_spec()
    spec.model.cv_folds = 1
    assert regression_spec(spec).cv_folds == 0


def test_shares_must_have_the_encoding_the_regression_expects():
    check_encoding([ShareBlock(("a",), [[1]], 14, 32, 64, 40)])
    with pytest.raises(ProgramError, match="f = 16"):
        check_encoding([ShareBlock(("a",), [[1]], 14, 16, 64, 40)])


def test_model_result_names_coefficients_in_feature_order():
    spec = make_spec()
    result = RegressionResult(
        coefficients=(1.0, 2.0, 3.0, 4.0, 5.0),
        intercept=-1.0,
        alpha=0.1,
        joined=50,
        iterations=40,
        cv_curve=((0.1, 2.5),),
    )
    out = model_result(result, spec)
    assert [(c.feature, c.value) for c in out.coefficients] == [
        ("gp_visits", 1.0),
        ("prescriptions", 2.0),
        ("exercise_hours", 3.0),
        ("smoker", 4.0),
        ("bmi", 5.0),
    ]
    assert (out.intercept, out.joined, out.alpha, out.iterations, out.target) == (-1.0, 50, 0.1, 40, "hospital_days")
    assert [(p.alpha, p.mean_squared_error) for p in out.cv_curve] == [(0.1, 2.5)]
    assert not out.converged and out.certified_gap == 0.0  # a result without a certificate says so


def test_a_cross_validated_glm_result_carries_its_loss_curve_and_k_fold_metrics():
    spec = make_spec()
    spec.model.kind = common_pb2.MODEL_KIND_LOGISTIC
    result = RegressionResult(
        coefficients=(1.0, 2.0, 3.0, 4.0, 5.0),
        intercept=0.0,
        alpha=0.1,
        joined=50,
        iterations=8,
        cv_curve=((0.01, 0.52), (0.1, 0.48)),
        metrics=(("accuracy", 0.8), ("f1", 0.7)),
        cv_metrics=(("accuracy", 0.75), ("f1", 0.65)),
    )
    out = model_result(result, spec)
    assert [(p.alpha, p.mean_validation_loss, p.mean_squared_error) for p in out.cv_curve] == [
        (0.01, 0.52, 0.0),
        (0.1, 0.48, 0.0),
    ]  # a log-loss, not a squared error
    assert [(m.value, m.cv_value) for m in out.metrics] == [(0.8, 0.75), (0.7, 0.65)]
    plain = model_result(replace(result, cv_curve=(), cv_metrics=()), spec)
    assert not plain.metrics[0].HasField("cv_value")


def test_standardised_coefficients_are_revealed_only_when_the_study_names_them():
    spec = make_spec()
    spec.model.standardize = True
    assert not regression_spec(spec).reveal_standardized
    spec.reveal.standardized_coefficients = True
    assert regression_spec(spec).reveal_standardized


def test_extraction_a_join_below_the_floor_stops_inside_the_mpc_before_anything_is_computed():
    spec = make_spec()  # min_intersection 10
    check_joined(10, spec, 0)
    check_joined(150, spec, 150)
    with pytest.raises(ProgramError, match="smaller than the minimum of 10 rows"):
        check_joined(2, spec, 0)
    with pytest.raises(ProgramError, match="minimum of 150 rows") as refused:
        check_joined(149, spec, 150)
    assert "149" not in str(refused.value)  # only the fact, never the count


def test_model_result_carries_the_certificate():
    result = RegressionResult(
        coefficients=(1.0,) * 5,
        intercept=0.0,
        alpha=0.1,
        joined=50,
        iterations=25,
        converged=True,
        certified_gap=2.0**-27,
    )
    out = model_result(result, make_spec())
    assert out.converged and out.certified_gap == 2.0**-27 and out.iterations == 25
