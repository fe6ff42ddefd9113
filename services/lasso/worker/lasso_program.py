"""The production MPC program: the study's model by services.lasso.mpc.secure_regression
(lasso, elastic net, ridge), services.lasso.mpc.secure_glm (logistic, SVM; with K-fold CV secure_glm_cv) or
services.lasso.mpc.secure_poisson (Poisson; with K-fold CV secure_poisson_cv).

Glue only, between the wire (StudySpec, share blocks, ModelResult) and the regression
core (RegressionSpec, an m × c integer share matrix, RegressionResult):

- `regression_spec` maps the approved study: columns in `inputs.study_columns` order
  (features, then the target, last), their declared ranges, which owner contributed
  each column, the model (kind, alphas, l1_ratio, folds, standardisation, iterations)
  and whether the CV curve is revealed;
- the shares must carry the encoding the core expects (f = 32 fractional bits,
  ℓ = 64 value bits, so the public offset 2^63);
- progress phases map onto the Phase enum; the owners' RegressionResult becomes the
  ModelResult (coefficients in feature order, iterations used, whether the convergence
  certificate held and its bound (lasso family only), the model kind and the revealed
  metrics), the helper's None an empty result;
- before anything is computed, the joined count (public inside MPC) is held against the
  study's minimum and this organisation's own floor (`RunContext.min_joined`, from its
  local policy): a smaller join stops the run with only that fact revealed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.inputs import assemble, column_owners, study_columns
from services.lasso.core.params import ColumnRange, ModelKind, RegressionResult, RegressionSpec
from services.lasso.mpc.secure_glm import secure_fit_glm
from services.lasso.mpc.secure_glm_cv import secure_fit_glm_cv
from services.lasso.mpc.secure_poisson import secure_fit_poisson
from services.lasso.mpc.secure_poisson_cv import secure_fit_poisson_cv
from services.lasso.mpc.secure_regression import FRAC_TABLE, secure_fit
from services.lasso.worker.program import ProgramError, RunContext
from services.study.spec import feature_names, target_name

VALUE_BITS = 64
KINDS = {
    common_pb2.MODEL_KIND_LASSO: ModelKind.LASSO,
    common_pb2.MODEL_KIND_ELASTIC_NET: ModelKind.ELASTIC_NET,
    common_pb2.MODEL_KIND_RIDGE: ModelKind.RIDGE,
    common_pb2.MODEL_KIND_LOGISTIC: ModelKind.LOGISTIC,
    common_pb2.MODEL_KIND_POISSON: ModelKind.POISSON,
    common_pb2.MODEL_KIND_SVM: ModelKind.SVM,
}
WIRE_KINDS = {kind: wire for wire, kind in KINDS.items()}
# Metric enum value ↔ the core's metric name ("METRIC_ADJUSTED_R2" ↔ "adjusted_r2").
METRIC_NAMES = {
    value: common_pb2.Metric.Name(value).removeprefix("METRIC_").lower()
    for value in common_pb2.Metric.values()
    if value
}
METRIC_VALUES = {name: value for value, name in METRIC_NAMES.items()}
PHASES = {
    "input": common_pb2.PHASE_INPUT,
    "gram": common_pb2.PHASE_GRAM,
    "iterations": common_pb2.PHASE_ITERATIONS,
    "reveal": common_pb2.PHASE_REVEAL,
}


def regression_spec(spec: common_pb2.StudySpec) -> RegressionSpec:
    """The regression core's parameters for an approved study (columns as `study_columns`)."""
    declared = {c.name: c for o in spec.owners for c in [*o.features, o.target] if c.name}
    columns = study_columns(spec)
    model = spec.model
    if model.kind not in KINDS:
        raise ProgramError(f"model kind {model.kind} is not supported")
    return RegressionSpec(
        kind=KINDS[model.kind],
        alphas=tuple(model.alphas),
        ranges=tuple(ColumnRange(declared[name].min, declared[name].max) for name in columns),
        target=len(columns) - 1,
        l1_ratio=model.l1_ratio
        if model.kind
        in (common_pb2.MODEL_KIND_ELASTIC_NET, common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON)
        else 1.0,
        cv_folds=model.cv_folds if model.cv_folds > 1 else 0,
        standardize=model.standardize,
        iterations=model.iterations,
        reveal_cv_curve=spec.reveal.cv_curve,
        reveal_standardized=spec.reveal.standardized_coefficients,
        column_owners=column_owners(spec),
        balanced_class_weights=model.balanced_class_weights,
        squared_hinge=model.svm_loss != common_pb2.SVM_LOSS_HINGE,
        metrics=tuple(METRIC_NAMES[m] for m in spec.reveal.metrics),
    )


def check_encoding(blocks: Sequence[ShareBlock]) -> None:
    for block in blocks:
        if (block.fractional_bits, block.value_bits) != (FRAC_TABLE, VALUE_BITS):
            raise ProgramError(
                f"shares encoded with f = {block.fractional_bits}, l = {block.value_bits}; "
                f"the regression needs f = {FRAC_TABLE}, l = {VALUE_BITS}"
            )


def model_result(result: RegressionResult, spec: common_pb2.StudySpec) -> lasso_pb2.ModelResult:
    standardized = result.standardized_coefficients or (0.0,) * len(result.coefficients)
    coefficients = [
        lasso_pb2.Coefficient(feature=name, value=w, standardized_value=s)
        for name, w, s in zip(feature_names(spec), result.coefficients, standardized, strict=True)
    ]
    linear = not KINDS.get(
        spec.model.kind, ModelKind.LASSO
    ).is_glm  # the GLMs' curve is their own loss, not a squared error
    curve = [
        lasso_pb2.CvPoint(alpha=a, mean_squared_error=loss if linear else 0.0, mean_validation_loss=loss)
        for a, loss in result.cv_curve
    ]
    estimates = dict(result.cv_metrics)
    metrics = [
        lasso_pb2.MetricValue(metric=METRIC_VALUES[name], value=value, cv_value=estimates.get(name))
        for name, value in result.metrics
    ]
    return lasso_pb2.ModelResult(
        coefficients=coefficients,
        intercept=result.intercept,
        joined=result.joined,
        alpha=result.alpha,
        cv_curve=curve,
        iterations=result.iterations,
        target=target_name(spec),
        converged=result.converged,
        certified_gap=result.certified_gap or 0.0,
        kind=spec.model.kind,
        metrics=metrics,
    )


def check_joined(rows: int, spec: common_pb2.StudySpec, min_joined: int) -> None:
    """Stop when the join is below the study's minimum or this organisation's floor."""
    floor = max(spec.min_intersection, min_joined)
    if rows < floor:
        raise ProgramError(f"the join is smaller than the minimum of {floor} rows this organisation allows")


async def run(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    regression = regression_spec(context.spec)
    check_encoding(context.shares)
    matrix = assemble(context.shares, study_columns(context.spec))
    check_joined(len(matrix), context.spec, context.min_joined)

    def progress(phase: str, done: int, total: int) -> None:
        context.report(PHASES.get(phase, common_pb2.PHASE_UNSPECIFIED), done, total)

    if regression.kind is ModelKind.POISSON:
        fit = secure_fit_poisson_cv if regression.cross_validate else secure_fit_poisson
    elif regression.kind.is_glm and regression.cross_validate:
        fit = secure_fit_glm_cv
    else:
        fit = secure_fit_glm if regression.kind.is_glm else secure_fit
    try:
        result = await fit(mpc, matrix, regression, progress)
    except NotImplementedError as exc:
        raise ProgramError(str(exc)) from None
    return lasso_pb2.ModelResult() if result is None else model_result(result, context.spec)
