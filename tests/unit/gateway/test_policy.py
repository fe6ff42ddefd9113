"""An organisation's disclosure floors (services/study/policy.py) against study specs, as a
protocol-following owner who wants the other owner's data would write them."""

from __future__ import annotations

import pytest

from riskmesh.v1 import common_pb2
from services.study.policy import (
    DisclosurePolicy,
    PolicyError,
    disclosures,
    explain,
    policy_from_mapping,
    relative_penalty,
)
from services.study.spec import normalise, validate
from tests.unit.gateway.specs import make_spec


def refused(policy: DisclosurePolicy, spec: common_pb2.StudySpec) -> set[str]:
    spec = normalise(spec)
    validate(spec)
    return {c.name for c in policy.refusals(spec)}


def two_patient_spec() -> common_pb2.StudySpec:
    """The insurer's extraction: two chosen patients, one hospital feature, a tiny alpha, so the
    revealed slope and intercept give both patients' hospital values."""
    spec = make_spec()
    del spec.owners[0].features[:]
    del spec.owners[1].features[1:]
    spec.min_intersection = 2
    spec.model.alphas[:] = [1e-9]
    return spec


def test_the_default_floor_is_100_rows_or_10_per_parameter():
    policy = DisclosurePolicy()
    assert policy.joined_floor(1) == 100 and policy.joined_floor(9) == 100 and policy.joined_floor(20) == 210


def test_extraction_two_patient_spec_is_refused_by_the_default_floors():
    reasons = refused(DisclosurePolicy(), two_patient_spec())
    assert reasons == {"minimum intersection", "relative penalty"}


def test_extraction_tiny_alpha_interpolation_is_refused_even_with_enough_rows():
    for kind, alpha in ((common_pb2.MODEL_KIND_LASSO, 1e-9), (common_pb2.MODEL_KIND_RIDGE, 1e-12)):
        spec = make_spec()
        spec.min_intersection = 1000
        spec.model.kind = kind
        spec.model.alphas[:] = [alpha]
        assert refused(DisclosurePolicy(), spec) == {"relative penalty"}
    # The same with standardisation and in a cross-validation grid (its smallest alpha counts).
    spec = make_spec()
    spec.min_intersection = 1000
    spec.model.standardize = True
    spec.model.cv_folds = 5
    spec.model.alphas[:] = [1.0, 1e-12]
    assert refused(DisclosurePolicy(), spec) == {"relative penalty"}


def test_a_reasonable_spec_passes_the_default_floors():
    spec = make_spec()
    spec.min_intersection = 100
    assert refused(DisclosurePolicy(), spec) == set()
    checks = DisclosurePolicy().checks(normalise(spec))
    assert [c.name for c in checks] == [
        "minimum intersection",
        "features",
        "relative penalty",
        "model kind",
        "optional reveals",
        "runs",
    ]


def test_relative_penalty_is_in_the_solvers_range_normalised_units():
    spec = normalise(make_spec())  # alpha 0.1, target [0, 365], widest feature prescriptions [0, 200]
    assert relative_penalty(spec) == pytest.approx(0.1 / (182.5 * 100))
    spec.model.standardize = True
    assert relative_penalty(spec) == pytest.approx(0.1 / 182.5)


def test_model_kinds_reveals_features_and_runs_follow_the_local_policy():
    strict = policy_from_mapping(
        {
            "model_kinds": ["ridge"],
            "reveals": [],
            "max_features": 4,
            "max_runs": 5,
            "min_intersection": 10,
            "rows_per_parameter": 1,
        }
    )
    spec = make_spec()
    spec.model.standardize = True
    spec.reveal.standardized_coefficients = True
    assert refused(strict, spec) == {"model kind", "optional reveals", "features", "runs"}
    message = explain(strict.refusals(normalise(spec)))
    assert "model kind lasso (local policy: ridge)" in message and "runs 10 (local policy: <= 5)" in message


@pytest.mark.parametrize(
    "table, message",
    [
        ({"min_intersection": 0}, "min_intersection must be an integer >= 1"),
        ({"min_intersection": True}, "integer"),
        ({"min_relative_penalty": -1}, "min_relative_penalty"),
        ({"model_kinds": ["boosting"]}, "unknown name"),
        ({"reveals": "cv_curve"}, "list of names"),
        ({"max_row": 3}, "unknown key"),
    ],
)
def test_a_malformed_policy_is_refused(table, message):
    with pytest.raises(PolicyError, match=message):
        policy_from_mapping(table)


def test_disclosures_name_what_each_party_receives():
    spec = normalise(make_spec())
    told = disclosures(spec)
    assert set(told) == {"insurer", "hospital", "helper"}
    assert told["insurer"] == told["hospital"] and "standardised" not in " ".join(told["insurer"])
    assert any("row counts" in line for line in told["helper"]) and "nothing of the model" in told["helper"]
    spec.model.standardize = True
    spec.reveal.standardized_coefficients = True
    assert any("spread" in line for line in disclosures(spec)["insurer"])
