"""Plaintext oracles for the secure regression (tests and benchmarks only).

``fit_plain`` runs exactly the algorithm of ``secure_regression`` — the same
public plan (``plan``), normalisation, Newton and Newton–Schulz iteration
counts, ADMM segments, polishing with one refinement step, selection,
restarts and the convergence certificate at the same checkpoints — in
float64 on the plaintext table, so the secure result can be compared to it
step by step.
``fit_sklearn`` and ``cv_curve_sklearn`` give scikit-learn's answer for the
same objective (ridge on the lasso scale: Ridge(alpha = α·m)); ``lasso_reference``
is its Lasso by feature name, the reference of the demo, benchmarks and e2e tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, Lasso, Ridge

from services.lasso.core.params import ModelKind, RegressionSpec
from services.lasso.core.plan import (
    ADMM_RELAX,
    ADMM_RHO,
    CERTIFICATE_TOLERANCE,
    DUAL_SLACKS,
    NEWTON_ITERATIONS,
    RIDGE_GRADIENT_BOUND,
    VALUE_BOUND,
    AlphaPlan,
    SolverPlan,
    gap_tolerance,
    make_plan,
)

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
    iterations: int  # ADMM iterations of the final fit (the checkpoint of the certificate, or the maximum)
    converged: bool  # every fit used was certified


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
    """One fit in the unit-diagonal coordinates u: F(u) = ½uᵀHu − q′ᵀu + Σλ|u|; P = F + ½Ĉ_yy."""

    h: Matrix
    q: Vector
    lam: Vector
    e: Vector
    cyy: float


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
    return Problem(h, e * cxy, lam, e, float(mom.cov[d, d]))


def objective(p: Problem, u: Vector) -> float:
    """F(u) = ½uᵀHu − q′ᵀu + Σλ|u| (up to the constant ½Ĉ_yy)."""
    return float(0.5 * u @ p.h @ u - p.q @ u + p.lam @ np.abs(u))


def certified(p: Problem, u: Vector, plan: SolverPlan) -> bool:
    """The certificate of ``plan``: a duality gap (L1 models) or a strong-convexity bound (ridge)."""
    g = p.h @ u - p.q
    s1, s2, s3 = float(p.lam @ np.abs(u)), float(u @ g), float(p.q @ u)
    primal = 0.5 * (p.cyy - s3 + s2) + s1  # P(u) = ½‖r‖² + λᵀ|u|, ‖r‖² = Ĉ_yy − q′ᵀu + uᵀg
    if not plan.has_l1:
        floor = len(u) * RIDGE_GRADIENT_BOUND**2 / (2 * plan.strong_convexity * CERTIFICATE_TOLERANCE)
        return bool(np.all(np.abs(g) <= RIDGE_GRADIENT_BOUND)) and primal >= floor
    for eta in DUAL_SLACKS:
        feasible = bool(np.all(np.abs(g) <= (1 + eta) * p.lam))
        if feasible and s1 + (1 - eta) * s2 - gap_tolerance(eta) * primal <= 0:
            return True
    return False


def refined_solve(m: Matrix, rhs: Vector, plan: SolverPlan) -> Vector:
    """M⁻¹·rhs by Newton–Schulz and one step of iterative refinement (M SPD, unit diagonal)."""
    x = newton_schulz(m, plan.ns_polish_iterations, float(len(rhs)))
    first = x @ rhs
    return first + x @ (rhs - m @ first)


def polish(p: Problem, z: Vector, plan: SolverPlan) -> Vector:
    """The exact minimiser of F on the support and signs of z, clipped to ±VALUE_BOUND."""
    active = (z != 0).astype(float)
    m = np.outer(active, active) * p.h + np.diag(1 - active)
    solved = active * refined_solve(m, active * (p.q - p.lam * np.sign(z)), plan)
    return np.clip(solved, -VALUE_BOUND, VALUE_BOUND)


@dataclass(frozen=True)
class Solution:
    """u per fit of a batch, the ADMM iterations used and whether every fit was certified."""

    u: list[Vector]
    iterations: int
    certified: bool


def solve(problems: list[Problem], plan: SolverPlan) -> Solution:
    """A batch of fits as in MPC: ADMM segments, each followed by polishing and the certificate
    of the polished points of the whole batch; stop at the first checkpoint where every one is
    certified. Otherwise each fit keeps the better of z and its polished point (F compared):
    the polished point restarts ADMM (z = u, w = −g/ρ with g = Hu − q′ clipped to the dual bound
    ±(1 + η₀)λ, as ADMM's w always is), z lets ADMM go on as it was."""
    if not plan.has_l1:  # ridge: the refined solve with every feature active
        us = [refined_solve(p.h, p.q, plan) for p in problems]
        return Solution(us, 0, all(certified(p, u, plan) for p, u in zip(problems, us, strict=False)))
    d = len(problems[0].q)
    steps = []
    for p in problems:
        k = newton_schulz(p.h + ADMM_RHO * np.eye(d), plan.ns_k_iterations, d + ADMM_RHO)
        steps.append((ADMM_RELAX * ADMM_RHO * k, ADMM_RELAX * (k @ p.q), p.lam / ADMM_RHO))
    zs = [np.zeros(d) for _ in problems]
    ws = [np.zeros(d) for _ in problems]
    done = 0
    for mark in plan.checkpoints:
        for i, (a1, c1, kappa) in enumerate(steps):
            z, w = zs[i], ws[i]
            for _ in range(mark - done):
                v = c1 + a1 @ (z - w) + (1 - ADMM_RELAX) * z + w
                z = v - np.clip(v, -kappa, kappa)
                w = v - z
            zs[i], ws[i] = z, w
        done = mark
        polished = [polish(p, z, plan) for p, z in zip(problems, zs, strict=False)]
        if all(certified(p, u, plan) for p, u in zip(problems, polished, strict=False)):
            return Solution(polished, mark, True)
        us = []
        for i, (p, z, u) in enumerate(zip(problems, zs, polished, strict=False)):
            if objective(p, u) < objective(p, z):
                bound = (1 + DUAL_SLACKS[0]) * p.lam
                zs[i], ws[i] = u, -np.clip(p.h @ u - p.q, -bound, bound) / ADMM_RHO
            us.append(zs[i])
    return Solution(us, done, False)


def fit_batch(
    items: list[tuple[Moments, AlphaPlan]], plan: SolverPlan
) -> tuple[list[tuple[Vector, float, Vector]], Solution]:
    """(ŵ, b̂, u) per (moments, alpha) fitted as one batch, and the batch's solution."""
    problems = [problem(mom, ap) for mom, ap in items]
    solution = solve(problems, plan)
    out = []
    for (mom, _), p, u in zip(items, problems, solution.u, strict=False):
        w_hat = p.e * u
        out.append((w_hat, float(mom.mean[-1] - w_hat @ mom.mean[:-1]), u))
    return out, solution


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
    converged = True
    if spec.cross_validate:
        folds = fold_moments(x, y, plan)
        fits, solution = fit_batch([(tr, ap) for tr, _ in folds for ap in plan.alphas], plan)
        n_alphas = len(plan.alphas)
        mses = [
            float(
                np.mean([validation_mse(tr, va, fits[k * n_alphas + a][0], plan) for k, (tr, va) in enumerate(folds)])
            )
            for a in range(n_alphas)
        ]
        curve = tuple((ap.alpha, mse) for ap, mse in zip(plan.alphas, mses, strict=False))
        best = plan.alphas[int(np.argmin(mses))]
        converged = solution.certified
    [(w_hat, b_hat, u)], final = fit_batch([(moments(x, y, plan), best)], plan)
    w, b = plan.to_original(list(w_hat), b_hat)
    std = plan.h_y * u / np.sqrt(best.diag_scale) if spec.standardize else None
    return PlainFit(np.asarray(w), b, std, best.alpha, curve, final.iterations, converged and final.certified)


def _sklearn_model(kind: ModelKind, alpha: float, n_rows: int, l1_ratio: float = 1.0) -> Lasso | ElasticNet | Ridge:
    if kind is ModelKind.LASSO:
        return Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000)
    if kind is ModelKind.ELASTIC_NET:
        return ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=1_000_000)
    return Ridge(alpha=alpha * n_rows, solver="cholesky")


def fit_sklearn(x: Matrix, y: Vector, spec: RegressionSpec, alpha: float) -> tuple[Vector, float, Vector | None]:
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


def lasso_reference(names: Sequence[str], x: Matrix, y: Vector, alpha: float, tol: float = 1e-12) -> dict[str, float]:
    """scikit-learn's Lasso(alpha) on a plaintext join: feature → w, and "(intercept)" → b.

    A `tol` of 1e-14 runs it to convergence (Gram-based coordinate descent); at that level it
    may stop at rounding error with a ConvergenceWarning, which is silenced: the objective gap
    the caller computes shows what it reached."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    model = Lasso(alpha=alpha, tol=tol, max_iter=10_000_000, precompute=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return {**dict(zip(names, (float(w) for w in model.coef_), strict=False)), "(intercept)": float(model.intercept_)}


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
