"""Study specs: validation, normalisation, the canonical digest, and who plays which part.

A `StudySpec` is what the three organisations approve. Approvals refer to its digest,
so the digest must be the same at every gateway for the same study and change with
any change a party could care about:

    spec_digest(spec) = SHA-256( normalise(spec).SerializeToString(deterministic=True) )

Deterministic protobuf serialisation writes fields in field-number order and map
entries sorted by key; it is stable for a given schema and protobuf runtime, which is
what all gateways of one riskmesh version share. `normalise` removes the remaining
ways to say the same thing twice (defaults, `-0.0`, empty sub-messages, unknown
fields), so two gateways that receive equal specs over the wire compute equal digests.

Validation is separate from normalisation: `validate` raises `SpecError` naming the
first offending field, and never echoes anything but column names and declared
numbers (a spec holds no patient data, only its shape).

Fixed-point capacity (docs/design.md, step 1): an attribute is encoded as
x' = round(x * 2^f) + 2^(l-1) in [0, 2^l) with l = 64 and f = 32 fractional bits, so
every declared bound must satisfy |x| < 2^(l-1-f) = 2^31.
"""

from __future__ import annotations

import hashlib
import math
import re

from riskmesh.v1 import common_pb2
from services.mesh.identity import ORG_NAME

STUDY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
DEFAULT_PAILLIER_BITS = 3072  # 128-bit security (NIST SP 800-57); 2048 (112-bit) may be chosen, nothing below
PAILLIER_BITS = (2048, 3072)
SUGGESTED_MIN_INTERSECTION = 10
MAX_CV_FOLDS = 10
# ADMM iterations a study may ask for: 250× the default (40) and 8× the most any test
# problem needed to converge (services/lasso/core/plan.py); at tens of ms per iteration a
# run stays well inside the lasso phase's deadline (30 min), so no study can hold the
# MPC workers of three organisations for hours.
MAX_ITERATIONS = 10_000
MAX_TITLE_CHARS = 200
MAX_COLUMN_CHARS = 128
ENCODING_BITS = 64
FRACTIONAL_BITS = 32
# |x| must stay below this so that round(x * 2^f) + 2^(l-1) fits in [0, 2^l).
MAX_ABS_VALUE = 2.0 ** (ENCODING_BITS - 1 - FRACTIONAL_BITS)
# Run policy: runs of one spec that may reveal anything, and the longest waiting time between two.
DEFAULT_MAX_RUNS = 10
MAX_RUNS = 1000
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
RUN_APPROVALS = (common_pb2.RUN_APPROVAL_ON_INPUT_CHANGE, common_pb2.RUN_APPROVAL_EVERY_RUN)

LINEAR_KINDS = (common_pb2.MODEL_KIND_LASSO, common_pb2.MODEL_KIND_ELASTIC_NET, common_pb2.MODEL_KIND_RIDGE)
CLASSIFIER_KINDS = (common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_SVM)
MODEL_KINDS = (*LINEAR_KINDS, common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON, common_pb2.MODEL_KIND_SVM)
# The generalised linear models: fitted by Newton steps (services/lasso/mpc/secure_glm.py: logistic, SVM;
# secure_poisson.py), with metrics and Predict per kind.
GLM_KINDS = (common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON, common_pb2.MODEL_KIND_SVM)
# Largest declared count (the secure Poisson fit's field sizes grow with log2 of it).
MAX_COUNT = 1 << 20
# l1_ratio a kind implies (elastic net, logistic and Poisson carry their own); `normalise` writes it
# so the digest is canonical.
IMPLIED_L1_RATIO = {common_pb2.MODEL_KIND_LASSO: 1.0, common_pb2.MODEL_KIND_RIDGE: 0.0, common_pb2.MODEL_KIND_SVM: 0.0}
# The quality measures each kind of model can reveal (services/lasso/mpc/secure_metrics.py).
REGRESSION_METRICS = (common_pb2.METRIC_R2, common_pb2.METRIC_ADJUSTED_R2, common_pb2.METRIC_MSE)
CLASSIFICATION_METRICS = (
    common_pb2.METRIC_ACCURACY,
    common_pb2.METRIC_PRECISION,
    common_pb2.METRIC_RECALL,
    common_pb2.METRIC_F1,
)
METRICS_BY_KIND = {
    **{kind: REGRESSION_METRICS for kind in LINEAR_KINDS},
    common_pb2.MODEL_KIND_POISSON: (*REGRESSION_METRICS, common_pb2.METRIC_DEVIANCE),
    **{kind: CLASSIFICATION_METRICS for kind in CLASSIFIER_KINDS},
}


class SpecError(ValueError):
    """The spec breaks a rule; the message names the field and the rule."""


def validate(spec: common_pb2.StudySpec) -> None:
    """Raise `SpecError` for the first rule `spec` breaks; return None when it is valid.

    Accepts a spec before or after `normalise` (defaults such as paillier_bits = 0 are fine).
    """
    if not STUDY_ID.fullmatch(spec.study_id):
        raise SpecError(
            f"study_id {spec.study_id!r} must be 3-63 characters of lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )
    if len(spec.title) > MAX_TITLE_CHARS or not spec.title.isprintable():
        raise SpecError(f"title must be printable text of at most {MAX_TITLE_CHARS} characters")
    _validate_parties(spec)
    _validate_owners(spec)
    _validate_model(spec)
    if spec.min_intersection < 1:
        raise SpecError(f"min_intersection must be at least 1 (suggested: {SUGGESTED_MIN_INTERSECTION})")
    if spec.model.cv_folds > 1 and spec.min_intersection < spec.model.cv_folds:
        raise SpecError(
            f"min_intersection ({spec.min_intersection}) must be at least cv_folds ({spec.model.cv_folds}) "
            "so that no fold is empty"
        )
    if spec.paillier_bits not in (0, *PAILLIER_BITS):
        raise SpecError(
            f"paillier_bits must be one of {PAILLIER_BITS} (0 means {DEFAULT_PAILLIER_BITS}), got {spec.paillier_bits}"
        )
    if spec.reveal.standardized_coefficients and not spec.model.standardize:
        raise SpecError("reveal.standardized_coefficients needs model.standardize")
    _validate_run_policy(spec.run_policy)


def _validate_run_policy(policy: common_pb2.RunPolicy) -> None:
    if policy.max_runs > MAX_RUNS:
        raise SpecError(
            f"run_policy.max_runs must be at most {MAX_RUNS} (0 means {DEFAULT_MAX_RUNS}), got {policy.max_runs}"
        )
    if policy.min_interval_seconds > MAX_INTERVAL_SECONDS:
        raise SpecError(f"run_policy.min_interval_seconds must be at most {MAX_INTERVAL_SECONDS} (a year)")
    if policy.run_approval not in (common_pb2.RUN_APPROVAL_UNSPECIFIED, *RUN_APPROVALS):
        raise SpecError("run_policy.run_approval must be RUN_APPROVAL_ON_INPUT_CHANGE or RUN_APPROVAL_EVERY_RUN")


def _validate_parties(spec: common_pb2.StudySpec) -> None:
    if len(spec.parties) != 3:
        raise SpecError(f"a study has exactly three parties (two data owners and one helper), got {len(spec.parties)}")
    for i, party in enumerate(spec.parties):
        if not ORG_NAME.fullmatch(party.org):
            raise SpecError(f"parties[{i}].org {party.org!r} is not a valid organisation name")
        if party.role not in (common_pb2.ROLE_DATA_OWNER, common_pb2.ROLE_HELPER):
            raise SpecError(f"parties[{i}] ({party.org}) must have role ROLE_DATA_OWNER or ROLE_HELPER")
    orgs = [p.org for p in spec.parties]
    if len(set(orgs)) != 3:
        raise SpecError(f"the three parties must be distinct organisations, got {orgs}")
    roles = [p.role for p in spec.parties]
    if roles.count(common_pb2.ROLE_DATA_OWNER) != 2 or roles.count(common_pb2.ROLE_HELPER) != 1:
        raise SpecError("a study has exactly two ROLE_DATA_OWNER parties and one ROLE_HELPER")


def _validate_owners(spec: common_pb2.StudySpec) -> None:
    owners = set(owner_orgs(spec))
    declared = [o.org for o in spec.owners]
    if len(declared) != 2 or set(declared) != owners:
        raise SpecError(f"owners must hold the columns of exactly the two data owners {sorted(owners)}, got {declared}")
    features: set[str] = set()
    targets: list[str] = []
    for i, owner in enumerate(spec.owners):
        where = f"owners[{i}] ({owner.org})"
        _validate_name(owner.birth_date_column, f"{where}.birth_date_column")
        _validate_name(owner.postal_code_column, f"{where}.postal_code_column")
        if owner.birth_date_column == owner.postal_code_column:
            raise SpecError(f"{where}: birth_date_column and postal_code_column must be different columns")
        id_columns = {owner.birth_date_column, owner.postal_code_column}
        for j, column in enumerate(owner.features):
            _validate_column(column, f"{where}.features[{j}]")
            if column.name in id_columns:
                raise SpecError(f"{where}.features[{j}]: {column.name!r} is an ID column and cannot be a feature")
            if column.name in features:
                raise SpecError(
                    f"{where}.features[{j}]: feature name {column.name!r} is used twice; "
                    "names must be unique across both owners"
                )
            features.add(column.name)
        if _has_target(owner):
            _validate_column(owner.target, f"{where}.target")
            if owner.target.name in id_columns:
                raise SpecError(f"{where}.target: {owner.target.name!r} is an ID column and cannot be the target")
            targets.append(owner.target.name)
    if len(targets) != 1:
        raise SpecError(f"exactly one data owner declares the target column, got {len(targets)}")
    if targets[0] in features:
        raise SpecError(f"target {targets[0]!r} is also declared as a feature")
    if not features:
        raise SpecError("the study declares no feature column")


def _validate_name(name: str, where: str) -> None:
    if not name.strip():
        raise SpecError(f"{where} must be a non-empty column name")
    if len(name) > MAX_COLUMN_CHARS or not name.isprintable():
        raise SpecError(f"{where} must be printable and at most {MAX_COLUMN_CHARS} characters")


def _validate_column(column: common_pb2.ColumnSpec, where: str) -> None:
    _validate_name(column.name, f"{where}.name")
    label = f"{where} ({column.name!r})"
    if not (math.isfinite(column.min) and math.isfinite(column.max)):
        raise SpecError(f"{label}: min and max must be finite numbers")
    if not column.min < column.max:
        raise SpecError(f"{label}: min ({column.min}) must be smaller than max ({column.max})")
    if abs(column.min) >= MAX_ABS_VALUE or abs(column.max) >= MAX_ABS_VALUE:
        raise SpecError(
            f"{label}: the declared range must lie within (-2^31, 2^31), the capacity of the "
            f"{ENCODING_BITS}-bit fixed-point encoding with {FRACTIONAL_BITS} fractional bits; rescale the column"
        )


def _validate_model(spec: common_pb2.StudySpec) -> None:
    if not spec.HasField("model"):
        raise SpecError("model is required")
    model = spec.model
    if model.kind not in MODEL_KINDS:
        names = ", ".join(common_pb2.ModelKind.Name(kind) for kind in MODEL_KINDS)
        raise SpecError(f"model.kind must be one of {names}")
    _validate_alphas(model)
    _validate_l1_ratio(model)
    if model.iterations > MAX_ITERATIONS:
        raise SpecError(
            f"model.iterations must be at most {MAX_ITERATIONS} (0 = the server default), got {model.iterations}"
        )
    _validate_model_options(model)
    if model.kind not in LINEAR_KINDS:
        _validate_glm(spec)
    _validate_metrics(spec)


def _validate_alphas(model: common_pb2.ModelSpec) -> None:
    """The alpha (grid) and the folds that choose among it."""
    if not model.alphas:
        raise SpecError("model.alphas must hold at least one regularisation strength")
    for i, alpha in enumerate(model.alphas):
        if not (math.isfinite(alpha) and alpha > 0):
            raise SpecError(f"model.alphas[{i}] must be a finite number > 0, got {alpha}")
    if len(set(model.alphas)) != len(model.alphas):
        raise SpecError("model.alphas must not repeat a value")
    _validate_folds(model)
    _validate_l1_ratio(model)
    if model.iterations > MAX_ITERATIONS:
        raise SpecError(
            f"model.iterations must be at most {MAX_ITERATIONS} (0 = the server default), got {model.iterations}"
        )


def _validate_folds(model: common_pb2.ModelSpec) -> None:
    if model.cv_folds > MAX_CV_FOLDS:
        raise SpecError(
            f"model.cv_folds must be 0 or 1 (no cross-validation) or 2..{MAX_CV_FOLDS}, got {model.cv_folds}"
        )
    if model.cv_folds > 1 and len(model.alphas) < 2:
        raise SpecError("cross-validation (cv_folds > 1) needs a grid of at least two alphas")
    if model.cv_folds <= 1 and len(model.alphas) > 1:
        raise SpecError(
            "several alphas need cv_folds >= 2 to choose among them; give one alpha or enable cross-validation"
        )


def _validate_l1_ratio(model: common_pb2.ModelSpec) -> None:
    if model.kind == common_pb2.MODEL_KIND_ELASTIC_NET:
        if not (math.isfinite(model.l1_ratio) and 0 < model.l1_ratio <= 1):
            raise SpecError(f"model.l1_ratio must be in (0, 1] for elastic net, got {model.l1_ratio}")
    elif model.kind in (common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON):
        if not (math.isfinite(model.l1_ratio) and 0 <= model.l1_ratio <= 1):
            raise SpecError(f"model.l1_ratio must be in [0, 1] (0 = L2, 1 = L1), got {model.l1_ratio}")
    else:
        implied = IMPLIED_L1_RATIO[model.kind]
        if model.l1_ratio not in (0.0, implied):
            raise SpecError(
                "model.l1_ratio applies to elastic net, logistic and Poisson only "
                f"(this model implies {implied}); leave it unset"
            )


def _validate_model_options(model: common_pb2.ModelSpec) -> None:
    """Options that belong to one model kind only."""
    if model.balanced_class_weights and model.kind != common_pb2.MODEL_KIND_LOGISTIC:
        raise SpecError("model.balanced_class_weights applies to MODEL_KIND_LOGISTIC only")
    if model.svm_loss != common_pb2.SVM_LOSS_UNSPECIFIED and model.kind != common_pb2.MODEL_KIND_SVM:
        raise SpecError("model.svm_loss applies to MODEL_KIND_SVM only")
    if model.svm_loss not in common_pb2.SvmLoss.values():
        raise SpecError(f"model.svm_loss {model.svm_loss} is not a known loss")


def _validate_glm(spec: common_pb2.StudySpec) -> None:
    """What the GLM fit (services/lasso/mpc/secure_glm.py) supports today, and its target."""
    model = spec.model
    kind = common_pb2.ModelKind.Name(model.kind)
    if model.kind not in GLM_KINDS:
        raise SpecError(f"model.kind {kind} is not implemented yet")
    if model.svm_loss == common_pb2.SVM_LOSS_HINGE:
        raise SpecError("the SVM's hinge loss is not implemented yet; use SVM_LOSS_SQUARED_HINGE")
    if model.standardize:
        raise SpecError(
            f"model.standardize is not supported for {kind} yet (the coefficients are fitted on the declared ranges)"
        )
    _validate_glm_target(spec, kind)


def _validate_glm_target(spec: common_pb2.StudySpec, kind: str) -> None:
    """Logistic and SVM need a declared 0/1 target, Poisson a non-negative count."""
    target = owner_columns(spec, target_owner(spec)).target
    if spec.model.kind in CLASSIFIER_KINDS and (target.min, target.max) != (0.0, 1.0):
        raise SpecError(
            f"{kind} needs a binary target declared with min 0 and max 1, "
            f"got [{target.min}, {target.max}] for {target.name!r}"
        )
    if spec.model.kind == common_pb2.MODEL_KIND_POISSON:
        _validate_count_target(target, kind)


def _validate_count_target(target: common_pb2.ColumnSpec, kind: str) -> None:
    """A count: whole numbers min ≥ 0 and max ≥ 1 (and ≤ MAX_COUNT) declared."""
    if target.min < 0:
        raise SpecError(f"{kind} needs a count target declared with min >= 0, got min {target.min} for {target.name!r}")
    if not (float(target.min).is_integer() and float(target.max).is_integer()):
        raise SpecError(
            f"{kind} needs a count target with whole-number bounds, "
            f"got [{target.min}, {target.max}] for {target.name!r}"
        )
    if not 1 <= target.max <= MAX_COUNT:
        raise SpecError(f"{kind} needs a count target declared with 1 <= max <= {MAX_COUNT}, got max {target.max}")


def _validate_metrics(spec: common_pb2.StudySpec) -> None:
    allowed = METRICS_BY_KIND[spec.model.kind]
    seen: set[int] = set()
    for i, metric in enumerate(spec.reveal.metrics):
        if metric not in allowed:
            names = ", ".join(common_pb2.Metric.Name(m) for m in allowed)
            label = common_pb2.Metric.Name(metric) if metric in common_pb2.Metric.values() else str(metric)
            raise SpecError(
                f"reveal.metrics[{i}] {label} does not apply to {common_pb2.ModelKind.Name(spec.model.kind)}; "
                f"allowed: {names}"
            )
        if metric in seen:
            raise SpecError(f"reveal.metrics[{i}] {common_pb2.Metric.Name(metric)} is listed twice")
        seen.add(metric)


def _has_target(owner: common_pb2.OwnerColumns) -> bool:
    """An owner declares a target when the sub-message is present and not empty."""
    return owner.HasField("target") and owner.target != common_pb2.ColumnSpec()


def _zero(x: float) -> float:
    """-0.0 → 0.0 (they serialise differently but mean the same)."""
    return x + 0.0


def normalise(spec: common_pb2.StudySpec) -> common_pb2.StudySpec:
    """A copy of `spec` with defaults filled in and equivalent spellings made equal.

    - paillier_bits 0 → 3072; cv_folds 1 → 0 (both mean "no cross-validation");
    - lasso / ridge / SVM get the l1_ratio they imply (1 / 0 / 0), as the proto comment states;
    - an SVM without a loss gets the squared hinge (its documented default);
    - model.iterations stays 0 when unset (0 = the lasso server's default);
    - `reveal` and `model` are always present, an empty `target` is removed, -0.0 → 0.0;
    - `run_policy` is always present: max_runs 0 → 10, run_approval unset → ON_INPUT_CHANGE;
    - unknown fields are dropped, so a gateway never approves fields it cannot read.
    The input is not modified. Owners keep their order (it is part of what is approved).
    """
    out = common_pb2.StudySpec()
    out.CopyFrom(spec)
    out.DiscardUnknownFields()
    if out.paillier_bits == 0:
        out.paillier_bits = DEFAULT_PAILLIER_BITS
    out.model.SetInParent()
    out.reveal.SetInParent()
    if out.model.cv_folds == 1:
        out.model.cv_folds = 0
    out.run_policy.SetInParent()
    if out.run_policy.max_runs == 0:
        out.run_policy.max_runs = DEFAULT_MAX_RUNS
    if out.run_policy.run_approval == common_pb2.RUN_APPROVAL_UNSPECIFIED:
        out.run_policy.run_approval = common_pb2.RUN_APPROVAL_ON_INPUT_CHANGE
    if out.model.kind in IMPLIED_L1_RATIO:
        out.model.l1_ratio = IMPLIED_L1_RATIO[out.model.kind]
    if out.model.kind == common_pb2.MODEL_KIND_SVM and out.model.svm_loss == common_pb2.SVM_LOSS_UNSPECIFIED:
        out.model.svm_loss = common_pb2.SVM_LOSS_SQUARED_HINGE
    out.model.l1_ratio = _zero(out.model.l1_ratio)
    alphas = [_zero(a) for a in out.model.alphas]
    del out.model.alphas[:]
    out.model.alphas.extend(alphas)
    for owner in out.owners:
        for column in owner.features:
            column.min, column.max = _zero(column.min), _zero(column.max)
        if _has_target(owner):
            owner.target.min, owner.target.max = _zero(owner.target.min), _zero(owner.target.max)
        else:
            owner.ClearField("target")
    return out


def canonical_bytes(spec: common_pb2.StudySpec) -> bytes:
    """The canonical encoding the digest is taken over: deterministic protobuf of the normalised spec."""
    return normalise(spec).SerializeToString(deterministic=True)


def spec_digest(spec: common_pb2.StudySpec) -> str:
    """SHA-256 (hex) of `canonical_bytes(spec)`; what every approval refers to."""
    return hashlib.sha256(canonical_bytes(spec)).hexdigest()


def role_of(spec: common_pb2.StudySpec, org: str) -> common_pb2.Role.ValueType:
    """The role of `org` in the study, or ROLE_UNSPECIFIED when it is not a party."""
    for party in spec.parties:
        if party.org == org:
            return party.role
    return common_pb2.ROLE_UNSPECIFIED


def owner_orgs(spec: common_pb2.StudySpec) -> tuple[str, str]:
    """The two data owners, in the parties' order (which fixes MPC party ids 0 and 1)."""
    owners = [p.org for p in spec.parties if p.role == common_pb2.ROLE_DATA_OWNER]
    if len(owners) != 2:
        raise SpecError(f"a study has exactly two data owners, got {len(owners)}")
    return owners[0], owners[1]


def helper_org(spec: common_pb2.StudySpec) -> str:
    """The helper organisation."""
    helpers = [p.org for p in spec.parties if p.role == common_pb2.ROLE_HELPER]
    if len(helpers) != 1:
        raise SpecError(f"a study has exactly one helper, got {len(helpers)}")
    return helpers[0]


def party_ids(spec: common_pb2.StudySpec) -> dict[str, int]:
    """MPC party id per org: the owners 0 and 1 in the parties' order, the helper 2."""
    first, second = owner_orgs(spec)
    return {first: 0, second: 1, helper_org(spec): 2}


def owner_columns(spec: common_pb2.StudySpec, org: str) -> common_pb2.OwnerColumns:
    """The columns `org` contributes (a reference into `spec`)."""
    for owner in spec.owners:
        if owner.org == org:
            return owner
    raise SpecError(f"{org} holds no columns in study {spec.study_id!r}")


def target_owner(spec: common_pb2.StudySpec) -> str:
    """The data owner that holds the target column."""
    holders = [o.org for o in spec.owners if _has_target(o)]
    if len(holders) != 1:
        raise SpecError(f"exactly one data owner declares the target column, got {len(holders)}")
    return holders[0]


def target_name(spec: common_pb2.StudySpec) -> str:
    """Name of the target column."""
    return owner_columns(spec, target_owner(spec)).target.name


def feature_names(spec: common_pb2.StudySpec) -> tuple[str, ...]:
    """All feature names: the first owner's (parties' order), then the second's.

    This is the order of the columns of X inside MPC and of `ModelResult.coefficients`.
    """
    return tuple(column.name for org in owner_orgs(spec) for column in owner_columns(spec, org).features)
