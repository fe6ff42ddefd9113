"""Plaintext oracles for the secure regression (tests and benchmarks only).

``fit_plain`` runs exactly the algorithm of ``secure_regression`` — the same
public plan (``plan``), normalisation, Newton and Newton–Schulz iteration
counts, ADMM iterations, polishing and selection — in float64 on the
plaintext table, so the secure result can be compared to it step by step.
``fit_sklearn`` and ``cv_curve_sklearn`` give scikit-learn's answer for the
same objective (ridge on the lasso scale: Ridge(alpha = α·m)); ``lasso_reference``
is its Lasso by feature name, the reference of the demo, benchmarks and e2e tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import ElasticNet, Lasso, Ridge

from services.lasso.core.plan import ADMM_RELAX, ADMM_RHO, NEWTON_ITERATIONS, AlphaPlan, SolverPlan, make_plan
from services.lasso.core.params import ModelKind, RegressionSpec

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Moments:
    """Normalised covariance Ĉ ((d+1)×(d+1), target last) and means μ̂ of one row set."""

    cov: Matrix
    mean: Vector
    n_rows: int


@dataclass(frozen=True)
class PlainFit:
    """Result of ``fit_plain`` (original scale unless noted)."""

    coefficients: Vector
    intercept: float
    standardized_coefficients: Vector | None
    alpha: float
    cv_curve: tuple[tuple[float, float], ...]


def split_table(table: Matrix, spec: RegressionSpec) -> tuple[Matrix, Vector]:
    """(X, y) from a table whose columns follow ``spec.ranges``."""
    table = np.asarray(table, dtype=np.float64)
    return table[:, list(spec.feature_columns)], table[:, spec.target]


def moments(x: Matrix, y: Vector, plan: SolverPlan) -> Moments:
    """Ĉ and μ̂ of the normalised columns (x̂, ŷ) = ((x − mid)/h, (y − mid_y)/h_y)."""
    z = np.column_stack([x, y])
    z = (z - np.asarray(plan.mids)) / np.asarray(plan.halves)
    mean = z.mean(axis=0)
    zc = z - mean
    return Moments(zc.T @ zc / len(z), mean, len(z))


def newton_inverse_sqrt(g: Vector, start: Vector, iterations: int = NEWTON_ITERATIONS) -> Vector:
    """y ← y(3 − g y²)/2 from ``start`` ≥ 1/√g: converges monotonically to 1/√g."""
    y = start.copy()
    for _ in range(iterations):
        y = (3 * y - g * y**3) / 2
    return y


def newton_schulz(m: Matrix, iterations: int, trace_bound: float) -> Matrix:
    """X ← X(2I − MX) from X₀ = I/trace_bound: converges to M⁻¹ for SPD M, λ_max ≤ trace_bound."""
    eye = np.eye(m.shape[-1])
    x = np.broadcast_to(eye / trace_bound, m.shape).copy()
    for _ in range(iterations):
        x = x @ (2 * eye - m @ x)
    return x


@dataclass(frozen=True)
class Problem:
    """One fit in the unit-diagonal coordinates u: F(u) = ½uᵀHu − q′ᵀu + Σλ|u|."""

    h: Matrix
    q: Vector
    lam: Vector
    e: Vector


def problem(mom: Moments, ap: AlphaPlan) -> Problem:
    """Jacobi-scaled problem of one alpha (see ``plan``)."""
    d = len(mom.mean) - 1
    cxx, cxy = mom.cov[:d, :d], mom.cov[:d, d]
    g_diag = ap.diag_scale * np.diag(cxx) + np.asarray(ap.diag_shift)
    e = newton_inverse_sqrt(g_diag, np.asarray(ap.newton_start))
    g = cxx.copy()
    g[np.diag_indices(d)] = g_diag
    h = e[:, None] * g * e[None, :]
    lam = np.asarray(ap.l1_public) * (e if ap.l1_times_e else 1.0)
    return Problem(h, e * cxy, lam, e)


def objective(p: Problem, u: Vector) -> float:
    """F(u) = ½uᵀHu − q′ᵀu + Σλ|u| (up to a constant)."""
    return float(0.5 * u @ p.h @ u - p.q @ u + p.lam @ np.abs(u))


def solve(p: Problem, plan: SolverPlan) -> Vector:
    """ADMM (fixed iterations) + polishing + selection, as ``secure_regression``; returns u."""
    d = len(p.q)
    if plan.admm_iterations == 0:  # ridge: the polishing solve with every feature active
        return newton_schulz(p.h, plan.ns_polish_iterations, float(d)) @ p.q
    k = newton_schulz(p.h + ADMM_RHO * np.eye(d), plan.ns_k_iterations, d + ADMM_RHO)
    a1 = ADMM_RELAX * ADMM_RHO * k
    c1 = ADMM_RELAX * (k @ p.q)
    kappa = p.lam / ADMM_RHO
    z, w = np.zeros(d), np.zeros(d)
    for _ in range(plan.admm_iterations):
        v = c1 + a1 @ (z - w) + (1 - ADMM_RELAX) * z + w
        z = v - np.clip(v, -kappa, kappa)
        w = v - z
    active = (z != 0).astype(float)
    sign = np.sign(z)
    m = np.outer(active, active) * p.h + np.diag(1 - active)
    polished = newton_schulz(m, plan.ns_polish_iterations, float(d)) @ (active * (p.q - p.lam * sign))
    return polished if objective(p, polished) < objective(p, z) else z


def fit_moments(mom: Moments, ap: AlphaPlan, plan: SolverPlan) -> tuple[Vector, float, Vector]:
    """(ŵ, b̂, u) of one alpha from normalised moments."""
    p = problem(mom, ap)
    u = solve(p, plan)
    w_hat = p.e * u
    b_hat = float(mom.mean[-1] - w_hat @ mom.mean[:-1])
    return w_hat, b_hat, u


def validation_mse(train: Moments, valid: Moments, w_hat: Vector, plan: SolverPlan) -> float:
    """Validation MSE (original units) of a model fitted on ``train``.

    With ω = [−ŵ; 1] and δ = μ̂_valid − μ̂_train: MSE = h_y²·(ωᵀĈ_valid ω + (δᵀω)²).
    """
    omega = np.append(-w_hat, 1.0)
    delta = valid.mean - train.mean
    return float(plan.h_y**2 * (omega @ valid.cov @ omega + (delta @ omega) ** 2))


def fold_moments(x: Matrix, y: Vector, plan: SolverPlan) -> list[tuple[Moments, Moments]]:
    """(training, validation) moments per fold."""
    out = []
    for start, stop in plan.folds:
        keep = np.ones(len(y), dtype=bool)
        keep[start:stop] = False
        out.append((moments(x[keep], y[keep], plan), moments(x[~keep], y[~keep], plan)))
    return out


def fit_plain(x: Matrix, y: Vector, spec: RegressionSpec) -> PlainFit:
    """The secure algorithm in float64 (including cross-validation when the spec asks for it)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    plan = make_plan(spec, len(y))
    curve: tuple[tuple[float, float], ...] = ()
    best = plan.alphas[0]
    if spec.cross_validate:
        folds = fold_moments(x, y, plan)
        mses = [
            float(np.mean([validation_mse(tr, va, fit_moments(tr, ap, plan)[0], plan) for tr, va in folds]))
            for ap in plan.alphas
        ]
        curve = tuple((ap.alpha, mse) for ap, mse in zip(plan.alphas, mses))
        best = plan.alphas[int(np.argmin(mses))]
    w_hat, b_hat, u = fit_moments(moments(x, y, plan), best, plan)
    w, b = plan.to_original(list(w_hat), b_hat)
    std = plan.h_y * u / np.sqrt(best.diag_scale) if spec.standardize else None
    return PlainFit(np.asarray(w), b, std, best.alpha, curve)


def _sklearn_model(kind: ModelKind, alpha: float, n_rows: int, l1_ratio: float = 1.0) -> Lasso | ElasticNet | Ridge:
    if kind is ModelKind.LASSO:
        return Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000)
    if kind is ModelKind.ELASTIC_NET:
        return ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=1_000_000)
    return Ridge(alpha=alpha * n_rows, solver="cholesky")


def fit_sklearn(
    x: Matrix, y: Vector, spec: RegressionSpec, alpha: float
) -> tuple[Vector, float, Vector | None]:
    """scikit-learn's (w, b, standardised w) for the spec's objective at one alpha."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if spec.standardize:
        mu, sd = x.mean(axis=0), x.std(axis=0)
        model = _sklearn_model(spec.kind, alpha, len(y), spec.l1_ratio).fit((x - mu) / sd, y)
        std = np.asarray(model.coef_, dtype=np.float64)
        w = std / sd
        return w, float(model.intercept_ - w @ mu), std
    model = _sklearn_model(spec.kind, alpha, len(y), spec.l1_ratio).fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_), None


def lasso_reference(names: Sequence[str], x: Matrix, y: Vector, alpha: float) -> dict[str, float]:
    """scikit-learn's Lasso(alpha) on a plaintext join: feature → w, and "(intercept)" → b."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    model = _sklearn_model(ModelKind.LASSO, alpha, len(y)).fit(x, y)
    return {**dict(zip(names, (float(w) for w in model.coef_))), "(intercept)": float(model.intercept_)}


def cv_curve_sklearn(x: Matrix, y: Vector, spec: RegressionSpec) -> tuple[tuple[float, float], ...]:
    """Mean validation MSE per alpha with scikit-learn on the spec's contiguous folds."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    plan = make_plan(spec, len(y))
    curve = []
    for alpha in spec.alphas:
        errors = []
        for start, stop in plan.folds:
            keep = np.ones(len(y), dtype=bool)
            keep[start:stop] = False
            w, b, _ = fit_sklearn(x[keep], y[keep], spec, alpha)
            errors.append(float(np.mean((y[~keep] - x[~keep] @ w - b) ** 2)))
        curve.append((alpha, float(np.mean(errors))))
    return tuple(curve)
