"""Study-spec rules of the model kinds beyond the linear ones, and of the revealed metrics."""

from __future__ import annotations

import pytest

from riskmesh.v1 import common_pb2
from services.study.spec import SpecError, normalise, spec_digest, validate
from tests.unit.gateway.specs import make_spec


def logistic_spec(**model: object) -> common_pb2.StudySpec:
    spec = make_spec()
    spec.owners[0].target.CopyFrom(common_pb2.ColumnSpec(name="readmitted", min=0, max=1))
    spec.model.CopyFrom(common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LOGISTIC, alphas=[0.01], **model))
    return spec


def test_a_logistic_study_with_metrics_is_valid() -> None:
    spec = logistic_spec(l1_ratio=0.5, balanced_class_weights=True)
    spec.reveal.metrics.extend([common_pb2.METRIC_F1, common_pb2.METRIC_ACCURACY])
    validate(spec)
    assert list(normalise(spec).reveal.metrics) == [
        common_pb2.METRIC_F1,
        common_pb2.METRIC_ACCURACY,
    ]  # the study's order


def test_l1_ratio_zero_is_the_l2_penalty_and_changes_the_digest() -> None:
    l2, l1 = logistic_spec(), logistic_spec(l1_ratio=1.0)
    validate(l2)
    validate(l1)
    assert spec_digest(l2) != spec_digest(l1)


def test_metrics_change_the_digest() -> None:
    plain, with_metric = logistic_spec(), logistic_spec()
    with_metric.reveal.metrics.append(common_pb2.METRIC_ACCURACY)
    assert spec_digest(plain) != spec_digest(with_metric)


def _svm_spec(loss: int, **model: object) -> common_pb2.StudySpec:
    spec = logistic_spec()
    spec.model.CopyFrom(common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_SVM, alphas=[0.01], svm_loss=loss, **model))
    return spec


def test_an_svm_without_a_loss_is_the_squared_hinge() -> None:
    spec = _svm_spec(common_pb2.SVM_LOSS_UNSPECIFIED)
    validate(spec)
    assert normalise(spec).model.svm_loss == common_pb2.SVM_LOSS_SQUARED_HINGE
    assert spec_digest(spec) == spec_digest(_svm_spec(common_pb2.SVM_LOSS_SQUARED_HINGE))


def _lasso_with(metric: int) -> common_pb2.StudySpec:
    spec = make_spec()
    spec.reveal.metrics.append(metric)
    return spec


@pytest.mark.parametrize(
    "spec, message",
    [
        (logistic_spec(l1_ratio=1.5), "l1_ratio must be in \\[0, 1\\]"),
        (logistic_spec(standardize=True), "standardize is not supported"),
        (logistic_spec(svm_loss=common_pb2.SVM_LOSS_HINGE), "svm_loss applies to MODEL_KIND_SVM only"),
        (_svm_spec(common_pb2.SVM_LOSS_HINGE), "hinge loss is not implemented yet"),
        (_svm_spec(common_pb2.SVM_LOSS_SQUARED_HINGE, l1_ratio=0.5), "leave it unset"),
        (_lasso_with(common_pb2.METRIC_ACCURACY), "METRIC_ACCURACY does not apply to MODEL_KIND_LASSO"),
        (_lasso_with(common_pb2.METRIC_UNSPECIFIED), "METRIC_UNSPECIFIED does not apply"),
    ],
)
def test_invalid_model_specs_are_refused(spec: common_pb2.StudySpec, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate(spec)


@pytest.mark.parametrize("kind", [common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_SVM])
def test_a_classifier_may_choose_its_alpha_by_cross_validation(kind: int) -> None:
    spec = logistic_spec(cv_folds=5)
    spec.model.kind = kind
    spec.model.alphas[:] = [0.001, 0.01, 0.1]
    spec.reveal.cv_curve = True
    spec.reveal.metrics.append(common_pb2.METRIC_ACCURACY)
    validate(spec)
    assert spec_digest(spec) != spec_digest(logistic_spec())


@pytest.mark.parametrize(
    "model, message",
    [
        ({"cv_folds": 11, "alphas": [0.01, 0.1]}, "cv_folds must be 0 or 1"),
        ({"cv_folds": 3, "alphas": [0.01]}, "at least two alphas"),
        ({"cv_folds": 0, "alphas": [0.01, 0.1]}, "cv_folds >= 2"),
    ],
)
def test_bad_folds_for_a_classifier_are_refused(model: dict[str, object], message: str) -> None:
    spec = logistic_spec()
    spec.model.cv_folds = int(model["cv_folds"])  # type: ignore[call-overload]
    spec.model.alphas[:] = model["alphas"]  # type: ignore[index]
    with pytest.raises(SpecError, match=message):
        validate(spec)


def test_classifier_folds_need_a_large_enough_minimum_join() -> None:
    spec = logistic_spec(cv_folds=5)
    spec.model.alphas[:] = [0.01, 0.1]
    spec.min_intersection = 4
    with pytest.raises(SpecError, match="at least cv_folds"):
        validate(spec)


def test_logistic_needs_a_declared_binary_target() -> None:
    spec = logistic_spec()
    spec.owners[0].target.max = 2
    with pytest.raises(SpecError, match="binary target declared with min 0 and max 1"):
        validate(spec)


def test_balanced_weights_are_for_logistic_only_and_metrics_once() -> None:
    spec = make_spec()
    spec.model.balanced_class_weights = True
    with pytest.raises(SpecError, match="balanced_class_weights applies to MODEL_KIND_LOGISTIC only"):
        validate(spec)
    twice = _lasso_with(common_pb2.METRIC_R2)
    twice.reveal.metrics.append(common_pb2.METRIC_R2)
    with pytest.raises(SpecError, match="listed twice"):
        validate(twice)


def poisson_spec(low: float = 0, high: float = 120, **model: object) -> common_pb2.StudySpec:
    spec = make_spec()
    spec.owners[0].target.CopyFrom(common_pb2.ColumnSpec(name="hospital_days", min=low, max=high))
    model.setdefault("alphas", [0.01])
    spec.model.CopyFrom(common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_POISSON, **model))
    return spec


def test_a_poisson_study_with_its_deviance_is_valid() -> None:
    spec = poisson_spec(l1_ratio=0.5)
    spec.reveal.metrics.extend([common_pb2.METRIC_DEVIANCE, common_pb2.METRIC_R2])
    validate(spec)
    assert spec_digest(spec) != spec_digest(poisson_spec(l1_ratio=0.5))


def test_a_cross_validated_poisson_study_is_valid() -> None:
    spec = poisson_spec(l1_ratio=1.0, cv_folds=5, alphas=[0.001, 0.01, 0.1])
    spec.reveal.cv_curve = True
    spec.reveal.metrics.append(common_pb2.METRIC_DEVIANCE)
    validate(spec)


@pytest.mark.parametrize(
    "spec, message",
    [
        (poisson_spec(low=-1), "count target declared with min >= 0"),
        (poisson_spec(high=120.5), "whole-number bounds"),
        (poisson_spec(low=0.5), "whole-number bounds"),
        (poisson_spec(high=0), "min \\(0.0\\) must be smaller than max"),
        (poisson_spec(high=2**21), "1 <= max <= 1048576"),
        (poisson_spec(l1_ratio=-0.1), "l1_ratio must be in \\[0, 1\\]"),
        (poisson_spec(cv_folds=5), "cross-validation \\(cv_folds > 1\\) needs a grid"),
        (poisson_spec(balanced_class_weights=True), "balanced_class_weights applies to MODEL_KIND_LOGISTIC only"),
    ],
)
def test_invalid_poisson_specs_are_refused(spec: common_pb2.StudySpec, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate(spec)


def test_poisson_refuses_classification_metrics() -> None:
    spec = poisson_spec()
    spec.reveal.metrics.append(common_pb2.METRIC_ACCURACY)
    with pytest.raises(SpecError, match="METRIC_ACCURACY does not apply to MODEL_KIND_POISSON"):
        validate(spec)
