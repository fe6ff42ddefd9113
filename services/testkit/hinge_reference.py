"""Plaintext oracles for the SVM's plain hinge loss (tests and studies only; no secure fit yet).

The objective, in the normalised coordinates of ``glm_plan`` (x̃ = [x̂ − μ̂, 1], ỹ = 2y − 1):

    f(v) = (1/m)·Σ_i max(0, 1 − ỹ_i·η_i) + ½·Σ_j γ_j·ŵ_j²,   η = x̃ᵀv,  γ_j = α/h_j²,

which is (1/m)·Σ max(0, 1 − ỹ(wᵀx + b)) + α/2·‖w‖² on the original scale, b unpenalised
(proto ``MODEL_KIND_SVM``). scikit-learn's LinearSVC(loss="hinge", C = 1/(m·α)) solves it
only approximately: it penalises the intercept as ½·(b/intercept_scaling)².

``solve_hinge_exact`` is the exact optimum with a checked certificate. The objective is
piecewise linear-quadratic, so the optimum is fixed by a partition of the rows into
L (ỹη < 1), S (ỹη = 1, the margin) and R (ỹη > 1); given the partition, the KKT conditions

    Γ̄v − (1/m)·Σ_L ỹ_i·x̃_i − (1/m)·Σ_S β_i·ỹ_i·x̃_i = 0,   ỹ_i·x̃_iᵀv = 1 (i ∈ S),   0 ≤ β_i ≤ 1

are a linear system in (v, β_S). The partition comes from a smoothed fit
(``solve_hinge_smoothed`` down to δ = 1e-10); the system is then solved and every condition
checked (to 1e-9); the result is returned only when it holds, so it is *the* optimum
(f is convex; strictly in ŵ, and b is fixed by the margin rows).

``solve_hinge_smoothed`` is the approach evaluated for a secure fit: the Huber-smoothed hinge

    L_δ(t) = 0 (t ≥ 1),  (1 − t)²/(2δ) (1 − δ < t < 1),  1 − t − δ/2 (t ≤ 1 − δ),

0 ≤ L − L_δ ≤ δ/2, minimised by semismooth Newton (per row only the region of t = ỹη, two
comparisons) with an Armijo line search, δ decreased by continuation from 1. It counts the
Newton steps and the objective evaluations a secure version would need (each one a pass over
the rows with a secret comparison per row); see docs/adr/0014-svm-hinge-loss.md.

``solve_hinge_softplus`` is the better candidate found: the softplus-smoothed hinge
δ·log(1 + e^((1 − t)/δ)) is smooth, so one plain Newton step per δ (a logistic-like step, no line
search) on a fixed schedule δ = 2^−2 … 2^−12 reached ≤ 9.2e-4 relative on the test problems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import GlmPlan, newton_plan
from services.lasso.core.params import ModelKind, RegressionSpec
from services.testkit.glm_reference import GlmFit, Rows, glm_rows

Vector = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

__all__ = [
    "HingeCertificateError",
    "SmoothedPath",
    "fit_hinge_exact",
    "fit_hinge_linear_svc",
    "fit_hinge_smoothed",
    "fit_hinge_softplus",
    "hinge_objective",
    "hinge_plan",
    "solve_hinge_softplus",
]

#: Rows with |1 − ỹη| below this at the smoothed solution are taken as the margin set S.
MARGIN_TOLERANCE = 1e-7
#: The KKT conditions are accepted to this (β in [0, 1], strict sides, stationarity).
CERTIFICATE_TOLERANCE = 1e-9
#: The continuation of the exact solver: δ = 10^−k down to 1e-10.
EXACT_DELTAS = tuple(10.0**-k for k in range(11))
#: The softplus continuation's schedule: one Newton step at each δ = 2^−2 … 2^−12 (11 steps; measured
#: ≤ 9.2e-4 relative on the test problems; ending at 2^−13 failed one of them, see ADR 0014).
SOFTPLUS_DELTAS = tuple(2.0**-k for k in range(2, 13))


class HingeCertificateError(ArithmeticError):
    """The KKT conditions of the hinge objective did not hold at the candidate (no exact optimum found)."""


@dataclass(frozen=True)
class SmoothedPath:
    """The smoothed fit's v and what it cost: Newton steps, objective evaluations, δ levels."""

    v: Vector
    newton_steps: int
    objective_evaluations: int
    levels: int


def hinge_plan(spec: RegressionSpec, n_rows: int) -> GlmPlan:
    """The public penalties and normalisation of a hinge SVM (the GLM plan; the secure fit refuses it today)."""
    if spec.kind is not ModelKind.SVM or spec.squared_hinge:
        raise ValueError("not an SVM with the plain hinge loss")
    return newton_plan(spec, n_rows, 2.0, False)


def hinge_objective(rows: Rows, ridge: Vector, v: Vector) -> float:
    """(1/m)·Σ max(0, 1 − ỹη) + ½·Σ γ_j·v_j² (γ = 0 for the intercept)."""
    margin = np.maximum(0.0, 1 - rows.y * (rows.x @ v))
    return float(margin.mean() + 0.5 * ridge @ (v * v))


def _smoothed_objective(rows: Rows, ridge: Vector, v: Vector, delta: float) -> float:
    mu = 1 - rows.y * (rows.x @ v)
    loss = np.where(mu >= delta, mu - delta / 2, np.where(mu > 0, mu * mu / (2 * delta), 0.0))
    return float(loss.mean() + 0.5 * ridge @ (v * v))


def _newton_direction(rows: Rows, ridge: Vector, v: Vector, delta: float) -> tuple[Vector, Vector]:
    """(δ·gradient, Newton direction) of f_δ at v: per row only the region of μ = 1 − ỹη.

    Scaled by δ so the Hessian weights are 0/1: δ·∇f_δ = (1/m)·X̃ᵀr + δ·Γv with
    r = −ỹ·(δ·[μ ≥ δ] + μ·[0 < μ < δ]), δ·∇²f_δ = (1/m)·X̃ᵀ diag([0 < μ < δ]) X̃ + δ·Γ.
    """
    m, d1 = rows.x.shape
    mu = 1 - rows.y * (rows.x @ v)
    linear = mu >= delta
    band = (mu > 0) & ~linear
    residual = -rows.y * (delta * linear + band * mu)
    gradient = rows.x.T @ residual / m + delta * ridge * v
    hessian = (rows.x.T * band) @ rows.x / m + delta * np.diag(ridge) + 1e-13 * np.eye(d1)
    return gradient, -np.linalg.solve(hessian, gradient)


def solve_hinge_smoothed(
    rows: Rows, ridge: Vector, deltas: tuple[float, ...], max_steps: int = 100, tolerance: float = 1e-13
) -> SmoothedPath:
    """Minimise f_δ for each δ in turn (warm-started), by semismooth Newton with an Armijo line search.

    Starts from the squared hinge's first Newton step at v = 0 (what the squared-hinge fit
    computes first). A level ends when a full step leaves every row's region unchanged (then
    the step was exact: f_δ is quadratic on that piece) or the step is below ``tolerance``.
    """
    v = _squared_hinge_start(rows, ridge)
    steps = evaluations = 0
    for delta in deltas:
        for _ in range(max_steps):
            mu = 1 - rows.y * (rows.x @ v)
            gradient, direction = _newton_direction(rows, ridge, v, delta)
            steps += 1
            start, slope, size = _smoothed_objective(rows, ridge, v, delta), float(gradient @ direction) / delta, 1.0
            evaluations += 1
            while _smoothed_objective(rows, ridge, v + size * direction, delta) > start + 1e-4 * size * slope:
                evaluations += 1
                size /= 2
                if size < 1e-12:
                    break
            evaluations += 1
            v = v + size * direction
            moved = 1 - rows.y * (rows.x @ v)
            same_regions = np.array_equal(moved >= delta, mu >= delta) and np.array_equal(moved > 0, mu > 0)
            if (size == 1.0 and same_regions) or float(np.max(np.abs(size * direction))) <= tolerance:
                break
    return SmoothedPath(v, steps, evaluations, len(deltas))


def _squared_hinge_start(rows: Rows, ridge: Vector) -> Vector:
    """The squared hinge's first Newton step at v = 0 (every row active): the secure SVM's first iterate."""
    m = rows.x.shape[0]
    return np.linalg.solve(2 * rows.x.T @ rows.x / m + np.diag(ridge), 2 * rows.x.T @ rows.y / m)


def solve_hinge_softplus(rows: Rows, ridge: Vector, deltas: tuple[float, ...] = SOFTPLUS_DELTAS) -> Vector:
    """One plain Newton step (no line search) per δ on the softplus-smoothed hinge δ·log(1 + e^(μ/δ)).

    μ = 1 − ỹη; 0 ≤ δ·log(1 + e^(μ/δ)) − max(0, μ) ≤ δ·log 2. Scaled by δ, the step is the
    logistic one: δ·∇f = (1/m)·X̃ᵀ(−δ·ỹ·σ(μ/δ)) + δ·Γv, δ·∇²f = (1/m)·X̃ᵀ diag(σ(1 − σ)) X̃ + δ·Γ.
    Smooth, so Newton needs no line search where the Huber-smoothed hinge did; it is still a
    measured schedule, not a proven one (ADR 0014).
    """
    m = rows.x.shape[0]
    v = _squared_hinge_start(rows, ridge)
    for delta in deltas:
        mu = 1 - rows.y * (rows.x @ v)
        s = np.exp(-np.logaddexp(0.0, -mu / delta))  # σ(μ/δ)
        gradient = delta * (rows.x.T @ (-rows.y * s) / m + ridge * v)
        hessian = (rows.x.T * (s * (1 - s))) @ rows.x / m + delta * np.diag(ridge)
        v = v - np.linalg.solve(hessian, gradient)
    return v


def solve_hinge_exact(rows: Rows, ridge: Vector) -> Vector:
    """The exact optimum: the partition from a smoothed fit to δ = 1e-10, then the KKT system, checked."""
    smoothed = solve_hinge_smoothed(rows, ridge, EXACT_DELTAS).v
    m, d1 = rows.x.shape
    t = rows.y * (rows.x @ smoothed)
    margin = np.abs(1 - t) <= MARGIN_TOLERANCE
    below = t < 1 - MARGIN_TOLERANCE
    signed = rows.x * rows.y[:, None]
    k = int(margin.sum())
    system = np.zeros((d1 + k, d1 + k))
    system[:d1, :d1] = np.diag(ridge)
    system[:d1, d1:] = -signed[margin].T / m
    system[d1:, :d1] = signed[margin]
    rhs = np.concatenate([signed[below].sum(axis=0) / m, np.ones(k)])
    solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
    v: Vector = solution[:d1]
    _check_certificate(rows, ridge, v, solution[d1:], margin, below)
    return v


def _check_certificate(rows: Rows, ridge: Vector, v: Vector, beta: Vector, margin: Mask, below: Mask) -> None:
    """Raise unless (v, β) satisfies the hinge KKT conditions for the partition (L = below, S = margin)."""
    m = rows.x.shape[0]
    t = rows.y * (rows.x @ v)
    signed = rows.x * rows.y[:, None]
    stationarity = ridge * v - (signed[below].sum(axis=0) + beta @ signed[margin]) / m
    tol = CERTIFICATE_TOLERANCE
    checks = {
        "β ≥ 0": beta.size == 0 or float(beta.min()) >= -tol,
        "β ≤ 1": beta.size == 0 or float(beta.max()) <= 1 + tol,
        "ỹη < 1 on L": bool(np.all(t[below] < 1 + tol)),
        "ỹη > 1 on R": bool(np.all(t[~below & ~margin] > 1 - tol)),
        "ỹη = 1 on S": bool(np.all(np.abs(t[margin] - 1) <= tol)),
        "stationarity": float(np.max(np.abs(stationarity))) <= tol,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise HingeCertificateError(f"hinge KKT conditions failed: {', '.join(failed)}")


def _to_original(plan: GlmPlan, rows: Rows, v: Vector) -> GlmFit:
    w_hat = v[:-1]
    w, b = plan.to_original(list(w_hat), float(v[-1] - w_hat @ rows.mean))
    return GlmFit(np.asarray(w), b)


def _problem(x: npt.ArrayLike, y: npt.ArrayLike, spec: RegressionSpec) -> tuple[GlmPlan, Rows, Vector]:
    y = np.asarray(y, dtype=np.float64)
    plan = hinge_plan(spec, len(y))
    return plan, glm_rows(np.asarray(x, dtype=np.float64), y, plan), np.asarray(plan.ridge)


def fit_hinge_exact(x: npt.ArrayLike, y: npt.ArrayLike, spec: RegressionSpec) -> GlmFit:
    """The exact optimum of the hinge SVM objective (reference for the 1e-3 accuracy bound)."""
    plan, rows, ridge = _problem(x, y, spec)
    return _to_original(plan, rows, solve_hinge_exact(rows, ridge))


def fit_hinge_smoothed(
    x: npt.ArrayLike, y: npt.ArrayLike, spec: RegressionSpec, deltas: tuple[float, ...]
) -> tuple[GlmFit, SmoothedPath]:
    """The smoothed-hinge continuation ending at ``deltas[-1]``, and its cost."""
    plan, rows, ridge = _problem(x, y, spec)
    path = solve_hinge_smoothed(rows, ridge, deltas)
    return _to_original(plan, rows, path.v), path


def fit_hinge_softplus(
    x: npt.ArrayLike, y: npt.ArrayLike, spec: RegressionSpec, deltas: tuple[float, ...] = SOFTPLUS_DELTAS
) -> GlmFit:
    """The softplus continuation (``solve_hinge_softplus``) on the original scale."""
    plan, rows, ridge = _problem(x, y, spec)
    return _to_original(plan, rows, solve_hinge_softplus(rows, ridge, deltas))


def fit_hinge_linear_svc(x: npt.ArrayLike, y: npt.ArrayLike, spec: RegressionSpec, intercept_scaling: float) -> GlmFit:
    """scikit-learn's LinearSVC(loss="hinge", C = 1/(m·α)): the same objective plus ½·(b/intercept_scaling)²
    (an independent, approximate check of ``fit_hinge_exact``: the gap shrinks as intercept_scaling grows)."""
    from sklearn.svm import LinearSVC  # noqa: PLC0415  (heavy import, tests only)

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    model = LinearSVC(
        loss="hinge",
        C=1 / (len(y) * spec.alphas[0]),
        dual=True,
        intercept_scaling=intercept_scaling,
        tol=1e-12,
        max_iter=10_000_000,
        random_state=0,
    )
    model.fit(x, y)
    return GlmFit(np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]))
