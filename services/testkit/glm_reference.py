"""Plaintext oracles for the secure GLM fits (tests and benchmarks only).

``fit_glm_plain`` runs the algorithm of ``services/lasso/mpc/secure_glm.py`` — the same
public plan (``glm_plan``), centring, fixed Jacobi scaling, Newton and Newton–Schulz
iteration counts, warm-started ADMM, polishing (on the previous outer iteration's ADMM
support) and selection — in float64 with the exact
link function, so the secure result can be compared with it step by step.
``fit_glm_exact`` is the exact optimum of the same objective (proximal Newton with
coordinate descent, run until nothing changes at 1e-15), and ``fit_glm_sklearn`` is
scikit-learn's answer where it solves the same objective:

    logistic:  LogisticRegression(C = 1/(m·α), l1_ratio = ρ, class_weight = None | "balanced")
               (scikit-learn ≥ 1.8: l1_ratio selects the penalty; saga for ρ > 0, lbfgs for ρ = 0)
    SVM:       none: LinearSVC(C, loss="squared_hinge") also penalises the intercept (intercept_scaling);
               ``fit_svm_lbfgs`` (SciPy's L-BFGS-B on the same objective) is the independent check.
    Poisson:   PoissonRegressor(alpha = α) for ρ = 0 (it minimises (1/2m)·deviance + α/2·‖w‖², which is
               (1/m)·Σ(e^η − yη) + α/2·‖w‖² up to a constant); L1 and elastic net: ``fit_poisson_exact``.

The Poisson fit has its own plan (``poisson_plan``): ``fit_poisson_plain`` is its twin.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.lasso.core.glm_plan import (
    ADMM_RELAX,
    ADMM_RHO,
    NEWTON_ITERATIONS,
    STEP_TOLERANCE,
    GlmPlan,
    make_glm_plan,
)
from services.lasso.core.params import ModelKind, RegressionSpec
from services.lasso.core.poisson_plan import START_STEP, PoissonPlan, make_poisson_plan
from services.testkit.plain_reference import newton_inverse_sqrt, newton_schulz, split_table

Matrix = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float64]

__all__ = [
    "GlmFit",
    "fit_glm_exact",
    "fit_glm_plain",
    "fit_glm_sklearn",
    "glm_rows",
    "original_scale",
    "solve_exact",
    "solve_plain_counted",
    "fit_poisson_exact",
    "fit_poisson_plain",
    "fit_poisson_sklearn",
    "split_table",
]


@dataclass(frozen=True)
class GlmFit:
    """Coefficients and intercept on the original scale."""

    coefficients: Vector
    intercept: float
    iterations: int = 0  # outer iterations used (the plaintext twin only)


@dataclass(frozen=True)
class Rows:
    """The normalised, centred rows x̃ = [x̂ − μ̂, 1], the target and the row weights c."""

    x: Matrix
    y: Vector
    c: Vector
    mean: Vector  # μ̂


def glm_rows(x: Matrix, y: Vector, plan: GlmPlan) -> Rows:
    """The rows as the secure fit holds them (the SVM's target as ỹ = 2y − 1)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xh = (x - np.asarray(plan.mids)) / np.asarray(plan.halves)
    mean = xh.mean(axis=0)
    c = class_weights(y) if plan.balanced else np.ones(len(y))
    target = 2 * y - 1 if plan.kind is ModelKind.SVM else y
    return Rows(np.column_stack([xh - mean, np.ones(len(y))]), target, c, mean)


def class_weights(y: Vector) -> Vector:
    """scikit-learn's "balanced": m/(2·m_1) for class 1, m/(2·m_0) for class 0."""
    m, m1 = len(y), float(np.sum(y))
    return np.where(y > 0.5, m / (2 * m1), m / (2 * (m - m1)))


def sigmoid(t: Vector) -> Vector:
    return np.exp(-np.logaddexp(0.0, -t))


def _link(plan: GlmPlan, rows: Rows, v: Vector, first: bool) -> tuple[Vector, Vector]:
    """(residual r_i, Hessian weight s_i) at v: logistic c_i(p_i − y_i), c_i p_i(1 − p_i);
    squared hinge 2a_i(η_i − ỹ_i), 2a_i with a_i = [1 − ỹ_i η_i > 0] (a generalised Hessian)."""
    if plan.kind is ModelKind.SVM:
        eta = rows.x @ v
        active = (1 - rows.y * eta > 0).astype(np.float64)
        return 2 * active * (eta - rows.y), 2 * active
    if first:
        p = np.full(len(rows.y), 0.5)
    else:
        p = sigmoid(rows.x @ v)
    return rows.c * (p - rows.y), rows.c * p * (1 - p)


def _objective(h: Matrix, q: Vector, lam: Vector, u: Vector) -> float:
    return float(0.5 * u @ h @ u - q @ u + lam @ np.abs(u))


def solve_plain(plan: GlmPlan, rows: Rows) -> Vector:
    """v = (ŵ, b̃) after the plan's outer iterations or its stopping rule (float64 mirror of the secure fit)."""
    return solve_plain_counted(plan, rows)[0]


def solve_plain_counted(plan: GlmPlan, rows: Rows) -> tuple[Vector, int]:
    """``solve_plain`` and the number of outer iterations it used."""
    m, d1 = rows.x.shape
    lam, gam = np.asarray(plan.l1), np.asarray(plan.ridge)
    v = np.zeros(d1)
    e = np.zeros(d1)
    support = np.zeros(d1)  # none before the first ADMM: the intercept only
    used = 0
    for k in range(plan.outer_iterations):
        used = k + 1
        r, s = _link(plan, rows, v, k == 0)
        g = rows.x.T @ r / m
        h = (rows.x.T * s) @ rows.x / m
        if k == 0:
            g1 = np.diag(h)[:-1] + gam[:-1]
            e = np.append(
                newton_inverse_sqrt(g1, np.asarray(plan.newton_start), NEWTON_ITERATIONS),
                1 / np.sqrt(plan.hessian_start),
            )
        big_g = h + np.diag(gam)
        hu = e[:, None] * big_g * e[None, :]
        qu = e * (h @ v - g)
        lu = lam * e
        if plan.has_l1:  # polishing on the previous outer iteration's ADMM iterate's support (secure_glm)
            z = admm_plain(plan, hu, qu, lu, v / e, k)
            u = polish_plain(plan, hu, qu, lu, z, support) if plan.polish[k] else z
            support = z
        else:
            u = solve_model_plain(plan, hu, qu, lu, v / e, k)
        v, stop = e * u, _small_step(plan, k, u, v / e)
        if stop:
            break
    return v, used


def _small_step(plan: GlmPlan, k: int, u: Vector, before: Vector) -> bool:
    """The stopping rule after outer iteration k: max |u − u_before| ≤ STEP_TOLERANCE (Jacobi units)."""
    return plan.checks[k] and float(np.max(np.abs(u - before))) <= STEP_TOLERANCE


def solve_model_plain(plan: GlmPlan, hu: Matrix, qu: Vector, lu: Vector, z: Vector, k: int) -> Vector:
    """Outer iteration k's model ½uᵀHu − qᵀu + Σλ|u| solved as the secure Poisson fit does (``secure_qp``),
    from z: ADMM, then (where the plan says) polishing on the ADMM iterate's own support."""
    d1 = len(qu)
    if not plan.has_l1:
        return newton_schulz(hu, plan.ns_solve_iterations, float(d1)) @ qu
    z = admm_plain(plan, hu, qu, lu, z, k)
    return polish_plain(plan, hu, qu, lu, z, z) if plan.polish[k] else z


def admm_plain(plan: GlmPlan, hu: Matrix, qu: Vector, lu: Vector, z: Vector, k: int) -> Vector:
    """``secure_qp.admm``: the plan's ADMM iterations on the model, warm-started at z."""
    d1 = len(qu)
    kmat = newton_schulz(hu + ADMM_RHO * np.eye(d1), plan.ns_k_iterations, d1 + ADMM_RHO)
    kappa = lu / ADMM_RHO
    w = (qu - hu @ z) / ADMM_RHO
    for _ in range(plan.admm[k]):
        x = ADMM_RELAX * (kmat @ (qu + ADMM_RHO * (z - w))) + (1 - ADMM_RELAX) * z + w
        z = x - np.clip(x, -kappa, kappa)
        w = x - z
    return z


def polish_plain(plan: GlmPlan, hu: Matrix, qu: Vector, lu: Vector, z: Vector, support: Vector) -> Vector:
    """``secure_qp.polish`` and ``select``: the model solved on the support and signs of ``support`` (intercept
    always active), kept if it lowers the model's objective, else z."""
    d1 = len(qu)
    active = (support != 0).astype(float)
    active[-1] = 1.0
    sign = np.sign(support)
    mmat = np.outer(active, active) * hu + np.diag(1 - active)
    polished = active * (newton_schulz(mmat, plan.ns_solve_iterations, float(d1)) @ (active * (qu - lu * sign)))
    return polished if _objective(hu, qu, lu, polished) < _objective(hu, qu, lu, z) else z


def fit_glm_plain(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """The secure algorithm in float64."""
    if spec.kind is ModelKind.POISSON:
        return fit_poisson_plain(x, y, spec)
    plan = make_glm_plan(spec, len(y))
    rows = glm_rows(x, y, plan)
    v, used = solve_plain_counted(plan, rows)
    return dataclasses.replace(original_scale(plan, rows, v), iterations=used)


def original_scale(plan: GlmPlan, rows: Rows, v: Vector) -> GlmFit:
    """v = (ŵ, b̃) in the fit's coordinates → coefficients and intercept on the original scale."""
    w_hat = v[:-1]
    w, b = plan.to_original(list(w_hat), float(v[-1] - w_hat @ rows.mean))
    return GlmFit(np.asarray(w), b)


def solve_exact(plan: GlmPlan, rows: Rows, tolerance: float = 1e-15, max_outer: int = 200) -> Vector:
    """The exact optimum: proximal Newton, each model solved by cyclic coordinate descent."""
    m, d1 = rows.x.shape
    lam, gam = np.asarray(plan.l1), np.asarray(plan.ridge)
    v = np.zeros(d1)
    for _ in range(max_outer):
        r, s = _link(plan, rows, v, False)
        g = rows.x.T @ r / m
        h = (rows.x.T * s) @ rows.x / m
        new = v.copy()
        for _ in range(10_000):
            before = new.copy()
            for j in range(d1):
                diag = h[j, j] + gam[j]
                rest = g[j] + h[j] @ (new - v) + gam[j] * new[j] - diag * new[j]
                new[j] = np.sign(-rest) * max(abs(rest) - lam[j], 0.0) / diag
            if np.max(np.abs(new - before)) <= tolerance:
                break
        done = np.max(np.abs(new - v)) <= tolerance
        v = new
        if done:
            break
    return v


def fit_glm_exact(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """The exact optimum of the spec's objective (reference for the accuracy bounds)."""
    if spec.kind is ModelKind.POISSON:
        return fit_poisson_exact(x, y, spec)
    plan = make_glm_plan(spec, len(y))
    rows = glm_rows(x, y, plan)
    return original_scale(plan, rows, solve_exact(plan, rows))


def fit_glm_sklearn(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """scikit-learn on the same objective (see the module docstring for the mapping)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415  (heavy import, tests only)

    if spec.kind is not ModelKind.LOGISTIC:
        raise ValueError(
            f"no scikit-learn model solves the {spec.kind.value} objective (LinearSVC penalises the intercept)"
        )
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho, m = spec.rho, len(y)
    model = LogisticRegression(
        C=1 / (m * spec.alphas[0]),
        l1_ratio=rho,
        solver="saga" if rho > 0 else "lbfgs",
        class_weight="balanced" if spec.balanced_class_weights else None,
        tol=1e-12,
        max_iter=1_000_000,
    )
    model.fit(x, y)
    return GlmFit(np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]))


def fit_svm_lbfgs(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """The squared-hinge SVM objective minimised by SciPy's L-BFGS-B (an independent check of ``fit_glm_exact``)."""
    from scipy.optimize import minimize  # noqa: PLC0415

    plan = make_glm_plan(spec, len(y))
    rows = glm_rows(x, y, plan)
    gam = np.asarray(plan.ridge)
    m = len(rows.y)

    def objective(v: Vector) -> tuple[float, Vector]:
        margin = np.maximum(0.0, 1 - rows.y * (rows.x @ v))
        gradient = rows.x.T @ (-2 * rows.y * margin) / m + gam * v
        return float(margin @ margin / m + 0.5 * gam @ (v * v)), gradient

    found = minimize(
        objective,
        np.zeros(rows.x.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 100_000},
    )
    return original_scale(plan, rows, found.x)


# ---- Poisson (log link) ------------------------------------------------------------------------------


def poisson_start(plan: PoissonPlan, y: Vector) -> float:
    """b₀: the midpoint of the grid cell of log ȳ (``poisson_plan``), as the secure comparisons give it."""
    above = np.mean(y) >= np.exp(np.asarray(plan.thresholds))
    return plan.thresholds[0] + START_STEP / 2 + START_STEP * float(np.sum(above[1:]))


def solve_poisson_plain(plan: PoissonPlan, rows: Rows) -> tuple[Vector, float, float, int]:
    """(v = (ŵ, β), b₀, max s over the iterates, outer iterations used) after the plan's outer iterations or
    its stopping rule: the secure fit in float64."""
    glm = plan.glm
    m, d1 = rows.x.shape
    b0 = poisson_start(plan, rows.y)
    inverse_kappa = np.exp(-b0)
    y_tilde = rows.y * inverse_kappa
    lam, gam = np.asarray(glm.l1) * inverse_kappa, np.asarray(glm.ridge) * inverse_kappa
    v = np.zeros(d1)
    e = np.ones(d1)
    s_max, used = 0.0, 0
    for k in range(glm.outer_iterations):
        s = rows.x @ v
        s_max = max(s_max, float(np.max(s)))
        mu = np.exp(s)
        g = rows.x.T @ (mu - y_tilde) / m
        h = (rows.x.T * mu) @ rows.x / m
        if k == 0:
            e[:-1] = newton_inverse_sqrt(np.diag(h)[:-1] + gam[:-1], np.asarray(plan.first_start), plan.first_newton)
        hu = e[:, None] * (h + np.diag(gam)) * e[None, :]
        qu = e * (h @ v - g)
        lu = lam * e
        delta = np.ones(d1)
        if k > 0:
            delta = newton_inverse_sqrt(np.diag(hu), np.full(d1, plan.rescale_start), plan.rescale_newton)
        scaled = solve_model_plain(glm, delta[:, None] * hu * delta[None, :], delta * qu, delta * lu, v / e / delta, k)
        v, before = e * delta * scaled, v
        used = k + 1
        if _small_step(glm, k, v / e, before / e):
            break
    return v, b0, s_max, used


def fit_poisson_plain(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """The secure Poisson algorithm in float64."""
    plan = make_poisson_plan(spec, len(y))
    rows = glm_rows(x, y, plan.glm)
    v, b0, _, used = solve_poisson_plain(plan, rows)
    v[-1] += b0
    return dataclasses.replace(original_scale(plan.glm, rows, v), iterations=used)


def poisson_objective(plan: GlmPlan, rows: Rows, v: Vector) -> float:
    """(1/m)·Σ (e^η − y·η) + Σ_j λ_j|ŵ_j| + ½γ_j ŵ_j² in the normalised coordinates."""
    eta = rows.x @ v
    lam, gam = np.asarray(plan.l1), np.asarray(plan.ridge)
    return float(np.mean(np.exp(eta) - rows.y * eta) + lam @ np.abs(v) + 0.5 * gam @ (v * v))


def solve_poisson_exact(plan: GlmPlan, rows: Rows, tolerance: float = 1e-13, max_outer: int = 500) -> Vector:
    """The exact optimum: proximal Newton from (0, log ȳ), each model by cyclic coordinate descent,
    with backtracking on the objective (Newton from far away can overshoot for the log link)."""
    m, d1 = rows.x.shape
    lam, gam = np.asarray(plan.l1), np.asarray(plan.ridge)
    v = np.zeros(d1)
    v[-1] = np.log(max(float(np.mean(rows.y)), 1e-300))
    for _ in range(max_outer):
        mu = np.exp(rows.x @ v)
        g = rows.x.T @ (mu - rows.y) / m
        h = (rows.x.T * mu) @ rows.x / m
        new = v.copy()
        for _ in range(10_000):
            before = new.copy()
            for j in range(d1):
                diag = h[j, j] + gam[j]
                rest = g[j] + h[j] @ (new - v) + gam[j] * new[j] - diag * new[j]
                new[j] = np.sign(-rest) * max(abs(rest) - lam[j], 0.0) / diag
            if np.max(np.abs(new - before)) <= tolerance * 1e-2:
                break
        step, start = 1.0, poisson_objective(plan, rows, v)
        while step > 1e-10 and poisson_objective(plan, rows, v + step * (new - v)) > start + 1e-15:
            step /= 2
        moved = step * (new - v)
        v = v + moved
        if np.max(np.abs(moved)) <= tolerance:
            break
    return v


def fit_poisson_exact(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """The exact optimum of the Poisson objective (reference for the accuracy bound)."""
    plan = make_poisson_plan(spec, len(y)).glm
    rows = glm_rows(x, y, plan)
    return original_scale(plan, rows, solve_poisson_exact(plan, rows))


def fit_poisson_sklearn(x: Matrix, y: Vector, spec: RegressionSpec) -> GlmFit:
    """scikit-learn's PoissonRegressor(alpha = α) minimises (1/2m)·deviance + α/2·‖w‖², which is
    (1/m)·Σ(e^η − yη) + α/2·‖w‖² up to a constant: the same objective for ρ = 0 (L2 only)."""
    from sklearn.linear_model import PoissonRegressor  # noqa: PLC0415  (heavy import, tests only)

    if spec.kind is not ModelKind.POISSON or spec.rho != 0:
        raise ValueError("PoissonRegressor solves the L2-penalised Poisson objective only (l1_ratio 0)")
    model = PoissonRegressor(alpha=spec.alphas[0], tol=1e-12, max_iter=100_000, solver="newton-cholesky")
    model.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return GlmFit(np.asarray(model.coef_, dtype=np.float64), float(model.intercept_))
