"""The public solver plan: every constant of the regression algorithm, derived
from the study (spec), the joined count m and the declared ranges only.

Both implementations follow it step by step: ``plain_reference`` in float64
and ``secure_regression`` in MPyC. Nothing here depends on patient data, so
every party computes the same plan locally.

Coordinates. With declared ranges [min_j, max_j], mid_j = (min_j + max_j)/2
and h_j = (max_j − min_j)/2, every column is normalised publicly,
x̂_j = (x_j − mid_j)/h_j ∈ [−1, 1] (likewise ŷ with h_y), so the covariance Ĉ
of [x̂, ŷ] has entries in [−1, 1] (Popoviciu: var ≤ h²). Dividing the
objective by h_y² and writing w_j = ŵ_j·h_y/h_j:

    (1/2m)‖ŷ − X̂ŵ − b̂‖² + Σ_j ℓ1_j |ŵ_j| + ½ ŵᵀ diag(g) ŵ,

non-standardised: ℓ1_j = αρ/(h_y h_j), ridge part G = Ĉxx + diag(α(1−ρ)/h_j²);
standardised (penalty on w_j·σ_j): G = Ĉxx + α(1−ρ)·diag(Ĉxx), ℓ1_j = αρ σ̂_j/h_y.
In both cases G_jj = a·Ĉ_jj + γ_j with public a, γ_j (``diag_scale``,
``diag_shift``).

Jacobi scaling (computed inside MPC): e_j = 1/√G_jj by Newton's iteration
y ← y(3 − G_jj y²)/2 from the public start 1/√(a + γ_j) ≥ e_j (Ĉ_jj ≤ 1),
and u = ŵ/e. In u the quadratic H = diag(e)·G·diag(e) has unit diagonal, and

    F(u) = ½uᵀHu − q′ᵀu + Σ_j λ_j|u_j|,   q′_j = e_j Ĉ_jy,
    λ_j = αρ e_j/(h_y h_j)  (non-standardised)   or   αρ/(h_y √a)  (standardised).

Solver: ADMM (Boyd et al., "Distributed optimization and statistical learning
via the alternating direction method of multipliers", 2011, §6.4 lasso) with
penalty ``ADMM_RHO`` and over-relaxation ``ADMM_RELAX``; the x-update uses
K = (H + ρI)⁻¹, computed once by the Newton–Schulz iteration
X ← X(2I − MX) from X₀ = I/(d + ρ) (trace(H) = d bounds λ_max; λ_min ≥ ρ, so
``ns_iterations`` is public). At public checkpoints (``checkpoints``: after
``FIRST_CHECK`` iterations, then every ``CHECK_EVERY``, up to the study's
maximum) the support and signs of z are used to *polish* (as OSQP does):
solve H_SS u_S = q′_S − λ_S s_S by Newton–Schulz on
M = (aaᵀ)∘H + diag(1 − a) plus one step of iterative refinement, and
check the certificate (below) on the polished points. If it does not hold,
the polished point *restarts* ADMM with the dual it implies (z = u,
w = −clip(Hu − q′)/ρ) where it has a lower F than z (secure comparison),
and ADMM goes on unchanged elsewhere. ADMM alone identifies the support of ill-conditioned
problems slowly (hundreds of iterations at condition numbers of 1e4); the
polished point is exact once the support is right, and ADMM restarted from
it repairs a wrong support within a segment or two (docs/adr/0004).

Certificate (checked at every checkpoint on the polished u, inside MPC). With g = Hu − q′ and
P(u) = ½Ĉ_yy − q′ᵀu + ½uᵀHu + λᵀ|u| (the objective divided by h_y²), the
scaled residual θ = (1 − η)·r is dual feasible when |g_j| ≤ (1 + η)λ_j for
every j, and then

    P(u) − P* ≤ gap_η(u) = (λᵀ|u| + uᵀg) − η·uᵀg + ½η²‖r‖²,   ‖r‖² = Ĉ_yy − q′ᵀu + uᵀg.

The run is certified when, for one of the public slacks η in ``DUAL_SLACKS``,
the point is dual feasible and gap_η ≤ ``CERTIFICATE_TOLERANCE``·P(u); the
relative objective gap (P − P*)/P* is then at most tolerance/(1 − tolerance).
In MPC, t = λᵀ|u| + (1 − η)uᵀg − (tolerance − η²)·P ≤ 0 is tested (it implies
gap_η ≤ tolerance·P since ½η²‖r‖² ≤ η²P), with margins for the rounding of g.
Ridge (no L1) uses strong convexity instead: P − P* ≤ ‖g‖²/(2μ) with the
public lower bound μ on λ_min(H) that its ridge penalty guarantees; it is
certified when every |g_j| ≤ ε = ``RIDGE_GRADIENT_BOUND`` and
P ≥ d·ε²/(2μ·tolerance). Only one
bit per check is opened (to all three parties): whether every fit of the
batch is certified. The run stops at the first certified checkpoint, so the
number of iterations used is revealed; without a certificate it runs to the
maximum and reports ``converged = False``.

Why not (F)ISTA: with a safe per-feature (Gershgorin row-sum) step, ISTA
needed 90–1200 iterations to reach 1e-6 on moderately to strongly correlated
features. ρ = 1/16 and r = 7/4 are dyadic so that the public factors rρ, r
and 1 − r are applied exactly inside truncations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.lasso.core.params import ModelKind, RegressionSpec, fold_bounds

#: ADMM penalty ρ in the unit-diagonal coordinates u (≈ √(λ_min·λ_max) of collinear designs, docs/adr/0004).
ADMM_RHO = 0.0625
#: ADMM over-relaxation factor (1.5–1.8 is the usual range; Eckstein & Bertsekas 1992).
ADMM_RELAX = 1.75
#: Default maximum number of ADMM iterations (see the module docstring and services/lasso/REGRESSION.md).
DEFAULT_ITERATIONS = 115
#: ADMM iterations before the first polish, restart and certificate check.
FIRST_CHECK = 10
#: ADMM iterations between two later checks.
CHECK_EVERY = 15
#: Certified bound on the relative objective gap (P − P*)/P (2^−27 ≈ 7.45e−9).
CERTIFICATE_TOLERANCE = 2.0**-27
#: Public slacks η of the dual point (1 − η)·r: small ones certify fits with small L1 weights λ_j
#: (the gradient's rounding must stay below η·λ_j), large ones fits whose L1 term λᵀ|u| is tiny
#: beside the residual (very small alphas). Tried together; passing one suffices.
DUAL_SLACKS = (2.0**-29, 2.0**-26, 2.0**-23, 2.0**-14)
#: η² is rounded up to a multiple of this in the test (keeps its coefficients short integers in MPC).
SLACK_SQUARE_GRAIN = 2.0**-41
#: Ridge: every |g_j| below this (normalised units) and P ≥ d·ε²/(2μ·tolerance) certify the fit.
RIDGE_GRADIENT_BOUND = 2.0**-36
#: Newton iterations for e = 1/√G_jj: enough from σ_j/h_j ≥ 1e-3 (1.5× growth, then quadratic).
NEWTON_ITERATIONS = 26
#: |u_j| of a polished point is clipped to this (the ADMM field's value bound, ``secure_solver``).
VALUE_BOUND = 256.0
#: Smallest eigenvalue the lasso polishing solve is sized for (near-collinear data below it
#: keeps the ADMM iterate, see the selection step).
POLISH_EIGENVALUE_FLOOR = 1e-4
#: Relative accuracy Newton–Schulz is run to: (1 − λ_min/λ_max)^(2^k) ≤ 2^−40.
_NS_LOG_TOLERANCE = 40 * math.log(2)
#: Cap on Newton–Schulz iterations (tiny ridge penalties).
_NS_MAX_ITERATIONS = 48


def ns_iterations(d: int, eigenvalue_floor: float, trace_bound: float) -> int:
    """Newton–Schulz iterations for an SPD matrix with λ_min ≥ floor, λ_max ≤ trace_bound.

    From X₀ = I/trace_bound the residual E = I − X·M has eigenvalues in
    [0, 1 − floor/trace_bound] and squares every iteration (Schulz 1933;
    Pan & Schreiber 1991), so k = ⌈log₂(ln(2^40)·trace_bound/floor)⌉ iterations
    bring it below 2^−40.
    """
    k = math.ceil(math.log2(_NS_LOG_TOLERANCE * trace_bound / eigenvalue_floor))
    return max(1, min(k, _NS_MAX_ITERATIONS))


@dataclass(frozen=True)
class AlphaPlan:
    """Public constants of one alpha (see the module docstring)."""

    alpha: float
    diag_scale: float  # a: G_jj = a·Ĉ_jj + γ_j
    diag_shift: tuple[float, ...]  # γ_j
    l1_public: tuple[float, ...]  # λ_j (standardised) or λ_j / e_j (non-standardised)
    l1_times_e: bool  # True: λ_j = l1_public[j]·e_j (secret); False: λ_j = l1_public[j]
    eigenvalue_floor: float  # public lower bound on λ_min(H) used for the polishing solve

    @property
    def newton_start(self) -> tuple[float, ...]:
        """Public Newton start 1/√(a + γ_j) ≥ 1/√G_jj."""
        return tuple(1 / math.sqrt(self.diag_scale + g) for g in self.diag_shift)


@dataclass(frozen=True)
class SolverPlan:
    """All public numbers of a run."""

    n_rows: int
    d: int
    mids: tuple[float, ...]  # per feature, then the target last
    halves: tuple[float, ...]  # per feature, then the target last
    alphas: tuple[AlphaPlan, ...]
    admm_iterations: int  # the maximum; 0 for ridge
    ns_k_iterations: int
    ns_polish_iterations: int
    folds: tuple[tuple[int, int], ...]  # () without cross-validation
    has_l1: bool
    checkpoints: tuple[int, ...]  # cumulative ADMM iterations at each check ((0,) for ridge)
    strong_convexity: float  # ridge: public lower bound on λ_min(H) for its certificate

    @property
    def h_y(self) -> float:
        """Half-range of the target."""
        return self.halves[-1]

    def to_original(self, w_hat: list[float], b_hat: float) -> tuple[list[float], float]:
        """Map (ŵ, b̂) in normalised coordinates to (w, b) on the original scale.

        y = mid_y + h_y·(b̂ + Σ ŵ_j (x_j − mid_j)/h_j), so w_j = ŵ_j h_y/h_j and
        b = mid_y + h_y b̂ − Σ_j w_j mid_j.
        """
        h_y, mid_y = self.halves[-1], self.mids[-1]
        w = [wh * h_y / h for wh, h in zip(w_hat, self.halves[:-1], strict=False)]
        b = mid_y + h_y * b_hat - sum(wj * mj for wj, mj in zip(w, self.mids[:-1], strict=False))
        return w, b


def alpha_plan(spec: RegressionSpec, alpha: float, halves: tuple[float, ...]) -> AlphaPlan:
    """Public constants of one alpha for the model in ``spec``."""
    rho = spec.rho
    d = spec.n_features
    h_x, h_y = halves[:-1], halves[-1]
    ridge = alpha * (1 - rho)
    if spec.standardize:
        a = 1 + ridge
        gamma = tuple(0.0 for _ in range(d))
        l1 = tuple(alpha * rho / (h_y * math.sqrt(a)) for _ in range(d))
        ridge_floor = ridge / (1 + ridge)
    else:
        a = 1.0
        gamma = tuple(ridge / h**2 for h in h_x)
        l1 = tuple(alpha * rho / (h_y * h) for h in h_x)
        ridge_floor = min(g / (1 + g) for g in gamma)
    if spec.kind is ModelKind.LASSO:
        floor = POLISH_EIGENVALUE_FLOOR
    else:
        floor = max(ridge_floor, POLISH_EIGENVALUE_FLOOR) if rho > 0 else ridge_floor
    return AlphaPlan(alpha, a, gamma, l1, not spec.standardize, floor)


def make_plan(spec: RegressionSpec, n_rows: int) -> SolverPlan:
    """The public plan of a run on ``n_rows`` joined rows."""
    order = spec.feature_columns + (spec.target,)
    mids = tuple(spec.ranges[j].mid for j in order)
    halves = tuple(spec.ranges[j].half for j in order)
    d = spec.n_features
    alphas = tuple(alpha_plan(spec, a, halves) for a in spec.alphas)
    has_l1 = spec.kind is not ModelKind.RIDGE
    iterations = (spec.iterations or DEFAULT_ITERATIONS) if has_l1 else 0
    floor = min(p.eigenvalue_floor for p in alphas)
    ns_k = ns_iterations(d, ADMM_RHO, d + ADMM_RHO)
    ns_polish = ns_iterations(d, floor, float(d))
    folds = tuple(fold_bounds(n_rows, spec.cv_folds)) if spec.cross_validate else ()
    return SolverPlan(
        n_rows, d, mids, halves, alphas, iterations, ns_k, ns_polish, folds, has_l1, checkpoints(iterations), floor
    )


def gap_tolerance(eta: float) -> float:
    """τ_η = tolerance − η² (η² rounded up): t = λᵀ|u| + (1 − η)uᵀg − τ_η·P ≤ 0 certifies."""
    return CERTIFICATE_TOLERANCE - math.ceil(eta**2 / SLACK_SQUARE_GRAIN) * SLACK_SQUARE_GRAIN


def checkpoints(max_iterations: int) -> tuple[int, ...]:
    """Cumulative ADMM iteration counts at which the solver polishes, restarts and checks.

    ``FIRST_CHECK``, then every ``CHECK_EVERY``, and the maximum itself; (0,) for ridge.
    """
    if max_iterations <= 0:
        return (0,)
    return (*range(FIRST_CHECK, max_iterations, CHECK_EVERY), max_iterations)
