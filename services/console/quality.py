"""How the results page names the fitted model and the quality measures the run revealed.

Only what the gateway returned is shown: a measure appears when the study asked for it
and the run revealed it (``ModelResult.metrics``), with its K-fold estimate when
cross-validation ran (``cv_value``); nothing is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from riskmesh.v1 import common_pb2, lasso_pb2
from services.study.spec import GLM_KINDS

KIND_LABELS = {
    common_pb2.MODEL_KIND_LASSO: "Lasso",
    common_pb2.MODEL_KIND_ELASTIC_NET: "Elastic net",
    common_pb2.MODEL_KIND_RIDGE: "Ridge",
    common_pb2.MODEL_KIND_LOGISTIC: "Logistic regression",
    common_pb2.MODEL_KIND_SVM: "Linear SVM",
    common_pb2.MODEL_KIND_POISSON: "Poisson regression",
}
# metric → (short id for the page, label, what it means)
METRICS = {
    common_pb2.METRIC_R2: ("r2", "R²", "share of the target's variance the model explains (1 is perfect)"),
    common_pb2.METRIC_ADJUSTED_R2: ("adjusted_r2", "Adjusted R²", "R² corrected for the number of features"),
    common_pb2.METRIC_MSE: ("mse", "Mean squared error", "mean of (target − prediction)², in the target's units²"),
    common_pb2.METRIC_DEVIANCE: ("deviance", "Mean Poisson deviance", "lower is better; 0 is a perfect fit"),
    common_pb2.METRIC_ACCURACY: ("accuracy", "Accuracy", "share of patients whose predicted class is right"),
    common_pb2.METRIC_PRECISION: ("precision", "Precision", "of those predicted positive, the share that are"),
    common_pb2.METRIC_RECALL: ("recall", "Recall", "of those positive, the share predicted positive"),
    common_pb2.METRIC_F1: ("f1", "F1", "harmonic mean of precision and recall"),
}


@dataclass(frozen=True)
class MetricRow:
    """One revealed measure as the page shows it."""

    key: str
    label: str
    meaning: str
    value: float
    cv_value: float | None


def model_kind_label(result: lasso_pb2.ModelResult, spec: common_pb2.StudySpec) -> str:
    """The fitted model's kind: the result's, or the study's when the result does not say."""
    kind = result.kind or spec.model.kind
    return KIND_LABELS.get(kind, common_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower())


def iterations_label(result: lasso_pb2.ModelResult, spec: common_pb2.StudySpec) -> str:
    """The GLMs count Newton steps (stopped once a step is small, uncertified); the linear models count
    solver iterations to a certified checkpoint."""
    return "Newton steps" if (result.kind or spec.model.kind) in GLM_KINDS else "Solver iterations"


def metric_rows(result: lasso_pb2.ModelResult) -> list[MetricRow]:
    """The revealed measures, in the study's order."""
    rows = []
    for metric in result.metrics:
        key, label, meaning = METRICS.get(
            metric.metric, (str(metric.metric), common_pb2.Metric.Name(metric.metric), "")
        )
        cv_value = metric.cv_value if metric.HasField("cv_value") else None
        rows.append(MetricRow(key, label, meaning, metric.value, cv_value))
    return rows


# What the cross-validation curve plots: the criterion the alpha is chosen by (CvPoint.mean_validation_loss).
CV_CRITERIA = {
    common_pb2.MODEL_KIND_LOGISTIC: "log-loss",
    common_pb2.MODEL_KIND_SVM: "SVM loss",
    common_pb2.MODEL_KIND_POISSON: "Poisson deviance",
}


def cv_criterion(result: lasso_pb2.ModelResult, spec: common_pb2.StudySpec) -> str:
    """The name of the validation loss on the curve: squared error for the linear models."""
    return CV_CRITERIA.get(result.kind or spec.model.kind, "squared error")


def cv_points(result: lasso_pb2.ModelResult) -> list[tuple[float, float]]:
    """(alpha, mean validation loss) per alpha of the grid; results from before
    `mean_validation_loss` existed carry the linear models' squared error only."""
    return [(p.alpha, p.mean_validation_loss or p.mean_squared_error) for p in result.cv_curve]
