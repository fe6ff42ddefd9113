"""Public parameters of one secure regression run, and its revealed result.

Everything here is public: all three parties approve it as part of the study
(model kind, alpha grid, folds, declared column ranges, iteration count). No
value in this module ever depends on patient data.

Objective (scikit-learn's, with intercept b, m joined rows, ρ = ``l1_ratio``):

    lasso:        (1/2m)·‖y − Xw − b‖² + α·‖w‖₁
    elastic net:  (1/2m)·‖y − Xw − b‖² + α·ρ·‖w‖₁ + α·(1−ρ)/2·‖w‖²
    ridge:        (1/2m)·‖y − Xw − b‖² + α/2·‖w‖²        (sklearn Ridge(alpha = α·m))

and the GLMs (η = Xw + b; pen(w) = α·ρ·‖w‖₁ + α·(1−ρ)/2·‖w‖², see ``glm_plan``):

    logistic:     (1/m)·Σ c_i·(log(1 + e^η_i) − y_i η_i) + pen(w)
                  (sklearn LogisticRegression(C = 1/(mα), l1_ratio = ρ))
    Poisson:      (1/m)·Σ (e^η_i − y_i η_i) + pen(w)                 (sklearn PoissonRegressor(alpha = α) when ρ = 0)
    SVM:          (1/m)·Σ L(1 − ỹ_i η_i) + α/2·‖w‖²,  ỹ = 2y − 1,  L(t) = max(0, t)² or max(0, t)

With ``standardize`` the features are first scaled to unit population
variance (scikit-learn's ``StandardScaler``), the fit is made on that scale and
the coefficients are reported on both scales.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


class SpecError(ValueError):
    """The regression parameters are inconsistent (never mentions data values)."""


#: Quality measures by name (``RegressionSpec.metrics``; the wire's ``Metric`` enum without the prefix).
REGRESSION_METRICS = ("r2", "adjusted_r2", "mse")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")


class ModelKind(enum.Enum):
    """The model: a penalised linear regression, or a GLM (logistic, Poisson, linear SVM)."""

    LASSO = "lasso"
    ELASTIC_NET = "elastic_net"
    RIDGE = "ridge"
    LOGISTIC = "logistic"
    POISSON = "poisson"
    SVM = "svm"

    @property
    def is_glm(self) -> bool:
        """Fitted on the rows by services/lasso/mpc/secure_glm.py (not on the Gram matrix)."""
        return self in (ModelKind.LOGISTIC, ModelKind.POISSON, ModelKind.SVM)

    @property
    def is_classifier(self) -> bool:
        """A 0/1 target and a predicted class."""
        return self in (ModelKind.LOGISTIC, ModelKind.SVM)


METRICS_BY_KIND = {
    ModelKind.LASSO: REGRESSION_METRICS,
    ModelKind.ELASTIC_NET: REGRESSION_METRICS,
    ModelKind.RIDGE: REGRESSION_METRICS,
    ModelKind.POISSON: (*REGRESSION_METRICS, "deviance"),
    ModelKind.LOGISTIC: CLASSIFICATION_METRICS,
    ModelKind.SVM: CLASSIFICATION_METRICS,
}


@dataclass(frozen=True)
class ColumnRange:
    """Declared, public, inclusive value range of one column of the joined table."""

    min: float
    max: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise SpecError("a declared column range is not finite")
        if not self.max > self.min:
            raise SpecError("a declared column range must have max > min")

    @property
    def mid(self) -> float:
        """Centre of the range, (min + max)/2."""
        return (self.min + self.max) / 2

    @property
    def half(self) -> float:
        """Half-width of the range, (max − min)/2."""
        return (self.max - self.min) / 2


@dataclass(frozen=True)
class RegressionSpec:
    """What to fit, on which columns of the joined share matrix.

    ``ranges`` has one entry per column of the share matrix, in its order;
    ``target`` is the index of the target column, every other column is a
    feature (in the same order as in the matrix). ``iterations``: for the lasso
    family the maximum number of solver iterations (0 picks ``DEFAULT_ITERATIONS``,
    see ``plan``), the solver stopping at the first public checkpoint where its
    certificate holds; for the GLMs the maximum number of Newton steps (0 picks
    the GLM default, see ``glm_plan``; the fit stops once a step is small). ``cv_folds`` ≥ 2 runs K-fold
    cross-validation over ``alphas`` and refits with the best one; otherwise
    exactly one alpha must be given. ``column_owners`` (optional, public, from
    the study) names the owner (MPC party 0 or 1) of each column: the join
    leaves an owner a zero share of its own columns, so that share is not
    input (a third less input work). ``reveal_standardized`` (with
    ``standardize``) also opens the standardised coefficients; the study
    default is off (services/lasso/worker/lasso_program.py maps it), since
    with the original-scale ones they give each feature's spread.
    """

    kind: ModelKind
    alphas: tuple[float, ...]
    ranges: tuple[ColumnRange, ...]
    target: int
    l1_ratio: float = 1.0
    cv_folds: int = 0
    standardize: bool = False
    iterations: int = 0
    reveal_cv_curve: bool = True
    reveal_standardized: bool = True
    column_owners: tuple[int, ...] = ()
    balanced_class_weights: bool = False
    squared_hinge: bool = True
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ranges) < 2:
            raise SpecError("need at least one feature and the target")
        if self.column_owners and (len(self.column_owners) != len(self.ranges) or set(self.column_owners) - {0, 1}):
            raise SpecError("column_owners must give owner 0 or 1 for every column")
        if not 0 <= self.target < len(self.ranges):
            raise SpecError("target column index out of range")
        if not self.alphas or any(not (math.isfinite(a) and a > 0) for a in self.alphas):
            raise SpecError("alphas must be positive and finite")
        if len(set(self.alphas)) != len(self.alphas):
            raise SpecError("alphas must be distinct")
        if self.cv_folds < 0 or self.cv_folds == 1 and len(self.alphas) > 1:
            raise SpecError("cv_folds must be 0 or >= 2")
        if self.cv_folds < 2 and len(self.alphas) != 1:
            raise SpecError("several alphas need cross-validation (cv_folds >= 2)")
        if self.iterations < 0:
            raise SpecError("iterations must be >= 0")
        self._check_model_options()

    def _check_model_options(self) -> None:
        """The penalty mix, the GLM options and the metrics fit the model kind."""
        if self.kind is ModelKind.ELASTIC_NET and not 0 < self.l1_ratio <= 1:
            raise SpecError("l1_ratio must be in (0, 1]")
        if self.kind in (ModelKind.LOGISTIC, ModelKind.POISSON) and not 0 <= self.l1_ratio <= 1:
            raise SpecError("l1_ratio must be in [0, 1]")
        if self.balanced_class_weights and self.kind is not ModelKind.LOGISTIC:
            raise SpecError("balanced class weights apply to logistic regression only")
        if self.kind.is_glm and self.standardize:
            raise SpecError("standardisation is not supported for this model yet")
        if not set(self.metrics) <= set(METRICS_BY_KIND[self.kind]) or len(set(self.metrics)) != len(self.metrics):
            raise SpecError("the metrics must be distinct and fit the model kind")

    @property
    def n_features(self) -> int:
        """d, the number of feature columns."""
        return len(self.ranges) - 1

    @property
    def feature_columns(self) -> tuple[int, ...]:
        """Indices of the feature columns in the share matrix, in order."""
        return tuple(j for j in range(len(self.ranges)) if j != self.target)

    @property
    def rho(self) -> float:
        """The L1 share of the penalty: 1 (lasso), l1_ratio (elastic net), 0 (ridge)."""
        return {ModelKind.LASSO: 1.0, ModelKind.RIDGE: 0.0, ModelKind.SVM: 0.0}.get(self.kind, self.l1_ratio)

    @property
    def cross_validate(self) -> bool:
        """True when the alpha is chosen by K-fold cross-validation."""
        return self.cv_folds >= 2


@dataclass(frozen=True)
class RegressionResult:
    """What the two data owners learn (the helper learns nothing).

    ``coefficients`` and ``intercept`` are on the original scale of the data;
    ``standardized_coefficients`` (set with ``standardize``) are the
    coefficients on the unit-variance scale. ``cv_curve`` holds
    (alpha, mean validation MSE) per alpha when cross-validation ran and the
    study reveals the curve. ``iterations`` are the solver iterations the final
    fit used (the checkpoint where its certificate held, or the maximum);
    ``converged`` says that the certificate held for every fit the result
    depends on (with cross-validation, every fold × alpha fit too), and then
    ``certified_gap`` bounds the relative objective gap (P − P*)/P* (up to the
    factor 1/(1 − gap)); ``None`` when not certified. The GLM fits have no
    certificate (Newton steps until one is small): ``converged`` stays False.
    ``metrics`` holds (metric name, value) in the study's order, on the whole join;
    ``cv_metrics`` (cross-validated GLM fits) the same metrics' K-fold estimates at the
    chosen alpha (the mean over the folds of each held-out fold's value). For the GLMs the
    ``cv_curve`` values are the mean validation loss (log-loss, squared hinge), not an MSE.
    """

    coefficients: tuple[float, ...]
    intercept: float
    alpha: float
    joined: int
    iterations: int
    standardized_coefficients: tuple[float, ...] | None = None
    cv_curve: tuple[tuple[float, float], ...] = field(default=())
    converged: bool = False
    certified_gap: float | None = None
    metrics: tuple[tuple[str, float], ...] = field(default=())
    cv_metrics: tuple[tuple[str, float], ...] = field(default=())


def check_table_shape(n_rows: int, n_columns: int, spec: RegressionSpec) -> None:
    """Raise SpecError if a share matrix of this shape cannot be fitted with ``spec``."""
    if n_columns != len(spec.ranges):
        raise SpecError("share matrix columns do not match the declared ranges")
    folds = max(spec.cv_folds, 1)
    if n_rows < 2 * folds or n_rows < 2:
        raise SpecError("too few joined rows for this regression")


def fold_bounds(n_rows: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous folds [start, stop) of the (randomly permuted) rows, as sklearn's KFold.

    The first ``n_rows % folds`` folds get one extra row.
    """
    sizes = [n_rows // folds + (1 if k < n_rows % folds else 0) for k in range(folds)]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def as_spec_ranges(ranges: Sequence[tuple[float, float]]) -> tuple[ColumnRange, ...]:
    """Convenience: ``[(min, max), ...]`` → ColumnRange tuple."""
    return tuple(ColumnRange(lo, hi) for lo, hi in ranges)
