"""Study spec validation (every rule, good and bad), normalisation, digest and party helpers."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskmesh.v1 import common_pb2
from services.study.spec import (
    DEFAULT_MAX_RUNS,
    DEFAULT_PAILLIER_BITS,
    SpecError,
    canonical_bytes,
    feature_names,
    helper_org,
    normalise,
    owner_columns,
    owner_orgs,
    party_ids,
    role_of,
    spec_digest,
    target_name,
    target_owner,
    validate,
)
from tests.unit.gateway.specs import make_spec

Mutation = Callable[[common_pb2.StudySpec], object]


def mutated(change: Mutation) -> common_pb2.StudySpec:
    spec = make_spec()
    change(spec)
    return spec


def _set(path: str, value: object) -> Mutation:
    """A mutation setting a dotted attribute path, e.g. 'model.cv_folds'."""

    def change(spec: common_pb2.StudySpec) -> None:
        *parents, leaf = path.split(".")
        target: object = spec
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)  # type: ignore[index]
        setattr(target, leaf, value)

    return change


def _alphas(*values: float) -> Mutation:
    def change(spec: common_pb2.StudySpec) -> None:
        del spec.model.alphas[:]
        spec.model.alphas.extend(values)

    return change


def _both(*changes: Mutation) -> Mutation:
    def change(spec: common_pb2.StudySpec) -> None:
        for c in changes:
            c(spec)

    return change


def _move_target_to_hospital(spec: common_pb2.StudySpec) -> None:
    spec.owners[1].target.CopyFrom(spec.owners[0].target)
    spec.owners[0].ClearField("target")


def _hospital_holds_all_features(spec: common_pb2.StudySpec) -> None:
    spec.owners[1].features.extend(spec.owners[0].features)
    del spec.owners[0].features[:]


def _reverse_owners(spec: common_pb2.StudySpec) -> None:
    owners = list(spec.owners)
    del spec.owners[:]
    spec.owners.extend(reversed(owners))


GOOD: dict[str, Mutation] = {
    "as given": lambda spec: None,
    "paillier 2048": _set("paillier_bits", 2048),
    "paillier 3072": _set("paillier_bits", 3072),
    "elastic net": _both(_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), _set("model.l1_ratio", 0.5)),
    "elastic net l1_ratio 1": _both(_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), _set("model.l1_ratio", 1.0)),
    "ridge": _set("model.kind", common_pb2.MODEL_KIND_RIDGE),
    "lasso with its implied l1_ratio": _set("model.l1_ratio", 1.0),
    "cv over a grid": _both(_set("model.cv_folds", 5), _alphas(0.01, 0.1, 1.0)),
    "cv 10 folds": _both(_set("model.cv_folds", 10), _alphas(0.01, 0.1)),
    "cv_folds 1 means no cv": _set("model.cv_folds", 1),
    "target at the hospital": _move_target_to_hospital,
    "hospital holds all features": _hospital_holds_all_features,
    "owners listed in another order": _reverse_owners,
    "helper listed first": lambda spec: spec.parties.insert(0, spec.parties.pop(2)),
    "negative ranges": _set("owners.1.features.2.min", -1e6),
    "near the capacity": _set("owners.1.features.2.max", 2.0**31 - 1),
    "min_intersection 1": _set("min_intersection", 1),
    "iterations set": _set("model.iterations", 200),
    "standardize": _set("model.standardize", True),
    "three-character id": _set("study_id", "a-1"),
    "63-character id": _set("study_id", "a" * 63),
}


@pytest.mark.parametrize("change", GOOD.values(), ids=GOOD.keys())
def test_valid_specs_pass(change: Mutation) -> None:
    spec = mutated(change)
    validate(spec)
    validate(normalise(spec))


def _drop_party(spec: common_pb2.StudySpec) -> None:
    spec.parties.pop()


def _add_party(spec: common_pb2.StudySpec) -> None:
    spec.parties.add(org="auditor", role=common_pb2.ROLE_HELPER)


def _drop_owner_columns(spec: common_pb2.StudySpec) -> None:
    spec.owners.pop()


def _columns_for_helper(spec: common_pb2.StudySpec) -> None:
    spec.owners[1].org = "helper"


def _target_at_both(spec: common_pb2.StudySpec) -> None:
    spec.owners[1].target.CopyFrom(common_pb2.ColumnSpec(name="days2", min=0, max=1))


def _no_features(spec: common_pb2.StudySpec) -> None:
    del spec.owners[0].features[:]
    del spec.owners[1].features[:]


BAD: dict[str, tuple[Mutation, str]] = {
    "empty id": (_set("study_id", ""), "study_id"),
    "upper-case id": (_set("study_id", "Diabetes"), "study_id"),
    "two-character id": (_set("study_id", "ab"), "study_id"),
    "64-character id": (_set("study_id", "a" * 64), "study_id"),
    "id starting with a dash": (_set("study_id", "-abc"), "study_id"),
    "id with underscore": (_set("study_id", "ab_c"), "study_id"),
    "title too long": (_set("title", "t" * 201), "title"),
    "title with a newline": (_set("title", "a\nb"), "title"),
    "two parties": (_drop_party, "exactly three parties"),
    "four parties": (_add_party, "exactly three parties"),
    "unspecified role": (_set("parties.0.role", common_pb2.ROLE_UNSPECIFIED), "role"),
    "three owners": (_set("parties.2.role", common_pb2.ROLE_DATA_OWNER), "two ROLE_DATA_OWNER"),
    "two helpers": (_set("parties.1.role", common_pb2.ROLE_HELPER), "two ROLE_DATA_OWNER"),
    "same org twice": (_set("parties.1.org", "insurer"), "distinct"),
    "bad org name": (_set("parties.1.org", "Hospital!"), "organisation name"),
    "one owner's columns missing": (_drop_owner_columns, "exactly the two data owners"),
    "columns for the helper": (_columns_for_helper, "exactly the two data owners"),
    "empty birth column": (_set("owners.0.birth_date_column", ""), "birth_date_column"),
    "blank postal column": (_set("owners.1.postal_code_column", "  "), "postal_code_column"),
    "birth = postal column": (_set("owners.1.postal_code_column", "dob"), "different columns"),
    "empty feature name": (_set("owners.1.features.0.name", ""), "name"),
    "feature is an ID column": (_set("owners.1.features.0.name", "zip"), "ID column"),
    "min = max": (_set("owners.1.features.2.min", 70), "smaller than max"),
    "min > max": (_set("owners.1.features.2.min", 80), "smaller than max"),
    "NaN min": (_set("owners.1.features.2.min", math.nan), "finite"),
    "infinite max": (_set("owners.1.features.2.max", math.inf), "finite"),
    "max at the capacity": (_set("owners.1.features.2.max", 2.0**31), "capacity"),
    "min below the capacity": (_set("owners.0.features.0.min", -(2.0**31)), "capacity"),
    "target beyond the capacity": (_set("owners.0.target.max", 1e12), "capacity"),
    "target min > max": (_set("owners.0.target.min", 400), "smaller than max"),
    "target without a name": (_set("owners.0.target.name", ""), "target.name"),
    "feature name used by both owners": (_set("owners.1.features.0.name", "gp_visits"), "unique across both owners"),
    "feature name used twice by one owner": (_set("owners.1.features.1.name", "exercise_hours"), "unique"),
    "no target": (lambda spec: spec.owners[0].ClearField("target"), "exactly one data owner declares the target"),
    "target at both owners": (_target_at_both, "exactly one data owner declares the target"),
    "target is also a feature": (_set("owners.0.target.name", "bmi"), "also declared as a feature"),
    "target is an ID column": (_set("owners.0.target.name", "postal_code"), "ID column"),
    "no features": (_no_features, "no feature"),
    "no model": (lambda spec: spec.ClearField("model"), "model is required"),
    "unspecified model kind": (_set("model.kind", common_pb2.MODEL_KIND_UNSPECIFIED), "model.kind"),
    "unknown model kind": (_set("model.kind", 42), "model.kind"),
    "no alphas": (_alphas(), "at least one"),
    "zero alpha": (_alphas(0.0), "> 0"),
    "negative alpha": (_alphas(-0.1), "> 0"),
    "NaN alpha": (_alphas(math.nan), "> 0"),
    "infinite alpha": (_alphas(math.inf), "> 0"),
    "repeated alpha": (_both(_set("model.cv_folds", 3), _alphas(0.1, 0.1)), "repeat"),
    "grid without cv": (_alphas(0.1, 1.0), "cv_folds >= 2"),
    "cv with one alpha": (_set("model.cv_folds", 5), "at least two alphas"),
    "11 folds": (_both(_set("model.cv_folds", 11), _alphas(0.1, 1.0)), "2..10"),
    "folds above min_intersection": (
        _both(_set("model.cv_folds", 5), _alphas(0.1, 1.0), _set("min_intersection", 4)),
        "no fold is empty",
    ),
    "elastic net without l1_ratio": (_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), "l1_ratio"),
    "elastic net l1_ratio > 1": (
        _both(_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), _set("model.l1_ratio", 1.5)),
        "l1_ratio",
    ),
    "elastic net negative l1_ratio": (
        _both(_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), _set("model.l1_ratio", -0.5)),
        "l1_ratio",
    ),
    "lasso with l1_ratio 0.5": (_set("model.l1_ratio", 0.5), "leave it unset"),
    "ridge with l1_ratio 1": (
        _both(_set("model.kind", common_pb2.MODEL_KIND_RIDGE), _set("model.l1_ratio", 1.0)),
        "leave it unset",
    ),
    "too many iterations": (_set("model.iterations", 10**6), "iterations"),
    "min_intersection 0": (_set("min_intersection", 0), "min_intersection"),
    "paillier 1024": (_set("paillier_bits", 1024), "paillier_bits"),
    "paillier 4096": (_set("paillier_bits", 4096), "paillier_bits"),
    "standardised reveal without standardize": (
        _set("reveal.standardized_coefficients", True),
        "needs model.standardize",
    ),
    "too many runs": (_set("run_policy.max_runs", 1001), "max_runs"),
    "interval over a year": (_set("run_policy.min_interval_seconds", 400 * 86400), "min_interval_seconds"),
    "unknown run approval": (_set("run_policy.run_approval", 7), "run_approval"),
}


@pytest.mark.parametrize("change, message", BAD.values(), ids=BAD.keys())
def test_invalid_specs_are_refused_with_a_clear_message(change: Mutation, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        validate(mutated(change))


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_normalise_fills_defaults_without_touching_the_input() -> None:
    spec = make_spec()
    spec.model.cv_folds = 1
    out = normalise(spec)
    assert out.paillier_bits == DEFAULT_PAILLIER_BITS and spec.paillier_bits == 0
    assert out.model.iterations == 0  # 0 = the lasso server's default
    assert out.model.cv_folds == 0 and out.model.l1_ratio == 1.0
    assert out.HasField("reveal") and out.HasField("model")
    assert out.run_policy.max_runs == DEFAULT_MAX_RUNS and out.run_policy.min_interval_seconds == 0
    assert out.run_policy.run_approval == common_pb2.RUN_APPROVAL_ON_INPUT_CHANGE
    assert normalise(out) == out
    ridge = make_spec()
    ridge.model.kind = common_pb2.MODEL_KIND_RIDGE
    assert normalise(ridge).model.l1_ratio == 0.0


def test_normalise_drops_an_empty_target_and_negative_zero() -> None:
    spec = make_spec()
    spec.owners[1].target.SetInParent()
    spec.owners[1].features[2].min = -0.0
    out = normalise(spec)
    assert not out.owners[1].HasField("target")
    assert math.copysign(1.0, out.owners[1].features[2].min) == 1.0
    assert out.owners[0].HasField("target")


def test_digest_is_hex_sha256_of_the_deterministic_encoding() -> None:
    import hashlib

    spec = make_spec()
    assert spec_digest(spec) == hashlib.sha256(normalise(spec).SerializeToString(deterministic=True)).hexdigest()
    assert canonical_bytes(spec) == normalise(spec).SerializeToString(deterministic=True)
    assert len(spec_digest(spec)) == 64


def test_digest_is_pinned() -> None:
    """Gateways of one version must agree; a change here breaks approvals across versions."""
    assert spec_digest(make_spec()) == PINNED_DIGEST


# Changed with the default Paillier size (2048 → 3072, issue 17): an unset paillier_bits now normalises to 3072.
PINNED_DIGEST = "53a964b532c4cb7f5e089770f0598ad05dcb9c6483937f4803e2e6ad51eeb448"


def test_digest_ignores_equivalent_spellings() -> None:
    base = spec_digest(make_spec())
    assert spec_digest(mutated(_set("paillier_bits", 3072))) == base
    assert spec_digest(mutated(_set("model.cv_folds", 1))) == base
    assert spec_digest(mutated(_set("model.l1_ratio", 1.0))) == base
    assert spec_digest(mutated(lambda s: s.owners[1].target.SetInParent())) == base
    assert spec_digest(mutated(lambda s: s.ClearField("reveal"))) == spec_digest(mutated(lambda s: s.reveal.Clear()))
    assert spec_digest(mutated(_set("owners.1.features.0.min", -0.0))) == base
    assert spec_digest(mutated(_set("run_policy.max_runs", DEFAULT_MAX_RUNS))) == base
    assert spec_digest(mutated(_set("run_policy.run_approval", common_pb2.RUN_APPROVAL_ON_INPUT_CHANGE))) == base
    wire = make_spec().SerializeToString() + bytes([0xF8, 0x3E, 0x01])  # unknown field 999 = 1
    assert spec_digest(common_pb2.StudySpec.FromString(wire)) == base


CHANGES: dict[str, Mutation] = {
    "study_id": _set("study_id", "diabetes-risk-2026"),
    "title": _set("title", "Risk factors"),
    "party order": lambda spec: spec.parties.insert(0, spec.parties.pop(1)),
    "owner order": _reverse_owners,
    "org name": _both(_set("parties.1.org", "clinic"), _set("owners.1.org", "clinic")),
    "birth column": _set("owners.0.birth_date_column", "born"),
    "postal column": _set("owners.0.postal_code_column", "postcode"),
    "feature name": _set("owners.1.features.0.name", "sport_hours"),
    "feature min": _set("owners.1.features.0.min", -1),
    "feature max": _set("owners.1.features.0.max", 41),
    "feature dropped": lambda spec: spec.owners[1].features.pop(),
    "feature order": lambda spec: spec.owners[1].features.insert(0, spec.owners[1].features.pop()),
    "target name": _set("owners.0.target.name", "days"),
    "target max": _set("owners.0.target.max", 366),
    "target moved": _move_target_to_hospital,
    "kind": _set("model.kind", common_pb2.MODEL_KIND_RIDGE),
    "alpha": _alphas(0.2),
    "l1_ratio": _both(_set("model.kind", common_pb2.MODEL_KIND_ELASTIC_NET), _set("model.l1_ratio", 0.5)),
    "cv": _both(_set("model.cv_folds", 5), _alphas(0.1, 1.0)),
    "standardize": _set("model.standardize", True),
    "iterations": _set("model.iterations", 99),
    "min_intersection": _set("min_intersection", 11),
    "reveal joined": _set("reveal.joined_count", False),
    "reveal cv": _set("reveal.cv_curve", True),
    "paillier_bits": _set("paillier_bits", 2048),
    "max runs": _set("run_policy.max_runs", 3),
    "min interval": _set("run_policy.min_interval_seconds", 60),
    "run approval": _set("run_policy.run_approval", common_pb2.RUN_APPROVAL_EVERY_RUN),
    "reveal standardised": _both(_set("model.standardize", True), _set("reveal.standardized_coefficients", True)),
}


def test_digest_changes_with_any_change() -> None:
    digests = {name: spec_digest(mutated(change)) for name, change in CHANGES.items()}
    digests["base"] = spec_digest(make_spec())
    assert len(set(digests.values())) == len(digests)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
bounds = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def specs(draw: st.DrawFn) -> common_pb2.StudySpec:
    spec = make_spec()
    spec.title = draw(st.text(max_size=40).filter(str.isprintable))
    lo, hi = sorted(draw(st.lists(bounds, min_size=2, max_size=2, unique=True)))
    spec.owners[1].features[2].min, spec.owners[1].features[2].max = lo, hi
    spec.owners[1].features[2].name = draw(
        names.filter(lambda n: n not in {"gp_visits", "prescriptions", "exercise_hours", "smoker"})
    )
    alphas = draw(st.lists(st.floats(min_value=1e-6, max_value=1e3), min_size=1, max_size=5, unique=True))
    _alphas(*alphas)(spec)
    spec.model.cv_folds = draw(st.integers(2, 10)) if len(alphas) > 1 else 0
    spec.min_intersection = draw(st.integers(10, 10**6))
    spec.paillier_bits = draw(st.sampled_from([0, 2048, 3072]))
    spec.model.standardize = draw(st.booleans())
    return spec


@settings(max_examples=60, deadline=None)
@given(specs())
def test_digest_is_deterministic_across_copies_and_wire_round_trips(spec: common_pb2.StudySpec) -> None:
    validate(spec)
    digest = spec_digest(spec)
    copy = common_pb2.StudySpec()
    copy.CopyFrom(spec)
    assert spec_digest(copy) == digest
    assert spec_digest(common_pb2.StudySpec.FromString(spec.SerializeToString())) == digest
    assert spec_digest(normalise(spec)) == digest
    assert spec_digest(common_pb2.StudySpec.FromString(canonical_bytes(spec))) == digest


@settings(max_examples=60, deadline=None)
@given(specs(), st.floats(min_value=1e-6, max_value=1e6))
def test_digest_is_sensitive_to_a_changed_bound(spec: common_pb2.StudySpec, delta: float) -> None:
    changed = common_pb2.StudySpec()
    changed.CopyFrom(spec)
    changed.owners[1].features[2].max = spec.owners[1].features[2].max + delta
    if changed.owners[1].features[2].max != spec.owners[1].features[2].max:
        assert spec_digest(changed) != spec_digest(spec)


def test_party_helpers() -> None:
    spec = make_spec()
    spec.parties.insert(0, spec.parties.pop(2))  # helper first: owners keep their relative order
    assert owner_orgs(spec) == ("insurer", "hospital")
    assert helper_org(spec) == "helper"
    assert party_ids(spec) == {"insurer": 0, "hospital": 1, "helper": 2}
    assert target_owner(spec) == "insurer" and target_name(spec) == "hospital_days"
    assert feature_names(spec) == ("gp_visits", "prescriptions", "exercise_hours", "smoker", "bmi")
    assert role_of(spec, "helper") == common_pb2.ROLE_HELPER
    assert role_of(spec, "hospital") == common_pb2.ROLE_DATA_OWNER
    assert role_of(spec, "stranger") == common_pb2.ROLE_UNSPECIFIED
    assert owner_columns(spec, "hospital").birth_date_column == "dob"
    with pytest.raises(SpecError):
        owner_columns(spec, "helper")


def test_feature_order_follows_the_parties_not_the_owners_list() -> None:
    spec = make_spec()
    _reverse_owners(spec)
    assert feature_names(spec)[:2] == ("gp_visits", "prescriptions")
    spec.parties.insert(0, spec.parties.pop(1))  # hospital first
    assert owner_orgs(spec) == ("hospital", "insurer")
    assert party_ids(spec) == {"hospital": 0, "insurer": 1, "helper": 2}
    assert feature_names(spec) == ("exercise_hours", "smoker", "bmi", "gp_visits", "prescriptions")
    moved = mutated(_move_target_to_hospital)
    _reverse_owners(moved)
    assert target_owner(moved) == "hospital" and target_name(moved) == "hospital_days"
