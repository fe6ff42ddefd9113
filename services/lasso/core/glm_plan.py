"""The public plan of a GLM fit (logistic, Poisson, linear SVM): every constant of the
algorithm, from the study (spec) and the joined count m only.

Both implementations follow it step by step: ``services/testkit/glm_reference.py`` in
float64 and ``services/lasso/mpc/secure_glm.py`` in MPyC. Nothing here depends on
patient data.

Coordinates. Features are normalised publicly with their declared ranges,
x̂_j = (x_j − mid_j)/h_j ∈ [−1, 1], then centred inside MPC with their (secret) mean,
x̃_j = x̂_j − μ̂_j ∈ [−2, 2]; with the intercept column 1 appended, x̃ has d + 1 entries.
The target is used as it is (0/1 for logistic, counts for Poisson; the SVM's ±1 is
ỹ = 2y − 1). With η = x̃ᵀv, v = (ŵ, b̃), the objective of ``params`` becomes

    f(v) = (1/m)·Σ_i c_i·ℓ(y_i, η_i) + Σ_j (λ_j·|ŵ_j| + ½·γ_j·ŵ_j²),
    λ_j = α·ρ/h_j,   γ_j = α·(1 − ρ)/h_j²   (w_j = ŵ_j/h_j; the intercept is unpenalised),

and the original coefficients follow publicly from the revealed ŵ and b̂ = b̃ − ŵᵀμ̂:
w_j = ŵ_j/h_j, b = b̂ − Σ_j w_j·mid_j.

Solver: proximal Newton (Lee, Sun & Saunders, "Proximal Newton-type methods for
minimizing composite functions", SIAM J. Optim. 2014). Outer iteration k forms the
gradient g and Hessian H of the smooth part at v_k from the rows (one pass of secure
products), and solves the penalised quadratic model

    min_v ½(v − v_k)ᵀ(H + Γ)(v − v_k) + (g + Γv_k)ᵀ(v − v_k) + Σ_j λ_j|ŵ_j|

in Jacobi-scaled coordinates u = v/e, e_j = 1/√G¹_jj fixed from the first Hessian
(s = ¼ for logistic at v = 0), by over-relaxed ADMM (ρ = 1/4, r = 7/4, as the lasso),
warm-started from v_k with the dual w = (q − Hz)/ρ; in the last ``POLISH_LAST`` outer
iterations the model is *polished* on a support and signs (a Newton–Schulz solve of the
reduced system) and the better of the polished and the ADMM point by the quadratic model
is kept (a secure comparison). The logistic and SVM fits (``secure_glm``) polish on the
support and signs of the previous outer iteration's ADMM iterate (none at k = 0: the
intercept only), so the polishing runs beside ADMM instead of after it; on the plaintext
twin's cases (``services/testkit/glm_cases.py``) every fit stopped at the same outer
iteration as polishing on the current ADMM iterate, with the same zero pattern and errors
(worst 8.5e-7). Poisson polishes on the current iterate. Without an L1 part the model is solved by Newton–Schulz
directly (plain Newton). The first iteration at v = 0 needs no link function
(p = ½, s = ¼).

Why: proximal Newton converges quadratically near the optimum: 8 outer iterations (the
default maximum) reached 1e-5 relative (max |w − w*| / max |w*|) and the exact zero
pattern on every case measured with the plaintext twin (m = 300 … 10,000, d = 4 … 50,
class shares 4 % … 50 %, with and without balanced class weights, max |η| up to 15), but
balanced classes need only 5 (the SVM 4). So from the fourth iteration on the fit stops as
soon as the Newton step is below STEP_TOLERANCE (one opened bit per check, as the lasso's
certificate checkpoints), polishing every iteration after which it may stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.lasso.core.params import ModelKind, RegressionSpec

#: Default outer (proximal Newton) iterations.
DEFAULT_OUTER_ITERATIONS = 8
#: ADMM iterations in the first outer iteration, and in every later one (warm-started).
ADMM_FIRST = 30
ADMM_LATER = 10
#: Logistic regression's: fewer, since the polished last steps set the accuracy and ADMM only has to
#: find the support. Measured with the plaintext twin on its cases (``services/testkit/glm_cases.py``:
#: m = 300 … 10,000, d = 4 … 50, class shares 4 % … 52 %, L1 and elastic net, balanced or not): 10/6 stops
#: at the same outer iteration as 15/6 and 30/10 on every case, and so does 8/6 (the margin); 6/6 and 4/6
#: take one step more on some cases, and 15/5 and 12/5 stop one step early on one or two (1.5e-6).
LOGISTIC_ADMM_FIRST = 10
LOGISTIC_ADMM_LATER = 6
#: The last outer iterations that polish and keep the better point (and every iteration after which the
#: fit may stop).
POLISH_LAST = 3
#: The stopping rule: after outer iteration k ≥ STOP_CHECK_FROM (counting from 1, never after the
#: last) the fit stops when the Newton step is small, max_j |u_k,j − u_k−1,j| ≤ STEP_TOLERANCE in
#: Jacobi units; one opened bit per check. Near the optimum Newton converges quadratically, so the
#: coefficients are then within ~step² (measured: step ≤ 1e-3 left ≤ 1e-7 relative, REGRESSION.md).
STOP_CHECK_FROM = 4
STEP_TOLERANCE = 1e-3
#: ADMM penalty and over-relaxation (dyadic: applied exactly inside truncations).
ADMM_RHO = 0.25
ADMM_RELAX = 1.75
#: Newton iterations for e = 1/√G¹_jj (as the lasso: enough from σ_j/h_j ≥ 2^−11).
NEWTON_ITERATIONS = 26
#: The secure fit (logistic, SVM) starts that Newton from bands instead: one batched comparison of G¹_jj
#: with the public G_j·2^−k, k = 1 … E_BANDS (G_j = 4s₀ + γ_j, the start's bound), puts G¹_jj·y₀² in
#: [1/2, 1), from which E_NEWTON_FROM_BANDS steps reach the rounding of FRAC = 40 bits (the error
#: ε = 1 − G·y² goes to (3ε² + ε³)/4: 0.5, 0.22, 0.039, 1.1e-3, 9e-7, 7e-13 < 2^−40; a sixth step, 3e-25,
#: would only round again). G¹_jj/G_j ≥ 2^−26 follows from σ_j/h_j ≥ 2^−11 (γ_j ≤ 1). 26 steps from the
#: public start (52 rounds) become one comparison and 5 (was 6 until the fourth session of 2026-12-06).
E_BANDS = 26
E_NEWTON_FROM_BANDS = 5
#: Smallest eigenvalue of the Jacobi-scaled model Hessian the Newton–Schulz solves are sized for.
EIGENVALUE_FLOOR = 1e-5
#: Relative accuracy Newton–Schulz is run to: (1 − λ_min/λ_max)^(2^k) ≤ 2^−40.
_NS_LOG_TOLERANCE = 40 * math.log(2)

# The link functions (services/lasso/mpc/secure_functions.py):
#: |η| < 2^(ETA_BITS − 1) at every iterate (assumed, documented).
ETA_BITS = 10
#: e^(−u) = (e^(−u/2^EXP_SQUARINGS))^(2^EXP_SQUARINGS), the inner exponential by its Taylor polynomial.
#: 7 with degree 8: the polynomial stays in (0.08, 1] for t = u/128 ∈ [0, 4] (|η| < 512) and is ≤ e^−0.18
#: for t ≥ 0.18, so E₀^128 ≤ 10^−10 where it no longer follows e^(−t); degree 8 costs no product more
#: than 6 (t⁴ times one linear combination of t … t⁴), and one squaring fewer is one truncation of m values.
EXP_SQUARINGS = 7
EXP_DEGREE = 8  # 4 … 8 (secure_functions.exp_neg)
#: Fractional bits of η in the sign comparison: a wrong sign only for |η| < 2^(1−SIGN_FRAC) (the three-party
#: truncation is off by −1 … +2 units). At 3 the
#: comparison has ℓ = 14 bits, so its product tree of ℓ + 2 leaves is one level (one round) shorter
#: than at 4, with one random bit fewer per row; the reciprocal's start error grows from 0.070 to 0.083.
SIGN_FRAC = 3
#: Newton steps for 1/(1 + v), v ∈ (0, e^(1/4)), from the linear minimax start (relative error 2.2e-9).
RECIPROCAL_STEPS = 3


def ns_iterations(trace_bound: float, eigenvalue_floor: float) -> int:
    """Newton–Schulz iterations from X₀ = I/trace_bound for λ_min ≥ floor (see services/lasso/core/plan.py)."""
    return max(1, math.ceil(math.log2(_NS_LOG_TOLERANCE * trace_bound / eigenvalue_floor)))


@dataclass(frozen=True)
class GlmPlan:
    """All public numbers of one GLM fit."""

    kind: ModelKind
    n_rows: int
    d: int
    alpha: float
    mids: tuple[float, ...]  # features
    halves: tuple[float, ...]  # features
    l1: tuple[float, ...]  # λ_j, then 0 for the intercept
    ridge: tuple[float, ...]  # γ_j, then 0 for the intercept
    admm: tuple[int, ...]  # ADMM iterations per outer iteration (empty tuple entries = 0 without L1)
    polish: tuple[bool, ...]  # per outer iteration: polish and select
    ns_k_iterations: int
    ns_solve_iterations: int
    balanced: bool
    hessian_start: float  # s at v = 0 (logistic ¼, SVM 2): the intercept's G¹ = hessian_start
    checks: tuple[bool, ...] = ()  # per outer iteration: test the stopping rule after it

    @property
    def outer_iterations(self) -> int:
        return len(self.admm)

    @property
    def has_l1(self) -> bool:
        return any(v > 0 for v in self.l1)

    @property
    def newton_start(self) -> tuple[float, ...]:
        """Public start 1/√(bound of G¹_jj) ≤ 1/√G¹_jj: x̃ ∈ [−2, 2] and Σ c_i = m give G¹_jj ≤ 4s₀ + γ_j."""
        return tuple(1 / math.sqrt(4 * self.hessian_start + g) for g in self.ridge[:-1])

    def to_original(self, w_hat: list[float], b_hat: float) -> tuple[list[float], float]:
        """(ŵ, b̂) in normalised coordinates → (w, b): w_j = ŵ_j/h_j, b = b̂ − Σ_j w_j·mid_j."""
        w = [wh / h for wh, h in zip(w_hat, self.halves, strict=True)]
        return w, b_hat - math.fsum(wj * mj for wj, mj in zip(w, self.mids, strict=True))


def make_glm_plan(spec: RegressionSpec, n_rows: int) -> GlmPlan:
    """The public plan of a GLM fit of ``spec`` (one alpha) on ``n_rows`` joined rows."""
    if not spec.kind.is_glm:
        raise ValueError("not a GLM")
    if spec.kind is ModelKind.POISSON or (spec.kind is ModelKind.SVM and not spec.squared_hinge):
        raise NotImplementedError(
            f"the {spec.kind.value} model{'' if spec.squared_hinge else ' with the hinge loss'} is not implemented yet"
        )
    # s at v = 0, the same for every row: logistic σ(0)(1 − σ(0)) = ¼; squared hinge 2 (every row active).
    if spec.kind is ModelKind.SVM:
        return newton_plan(spec, n_rows, 2.0, spec.balanced_class_weights)
    return newton_plan(
        spec, n_rows, 0.25, spec.balanced_class_weights, admm_counts=(LOGISTIC_ADMM_FIRST, LOGISTIC_ADMM_LATER)
    )


def newton_plan(
    spec: RegressionSpec,
    n_rows: int,
    hessian_start: float,
    balanced: bool,
    admm_counts: tuple[int, int] = (ADMM_FIRST, ADMM_LATER),
) -> GlmPlan:
    """The outer-iteration plan every GLM shares (penalties, ADMM, polishing, the stopping rule), for the
    model's Hessian weight ``hessian_start`` at v = 0 and its ADMM iterations (first, later);
    ``make_poisson_plan`` uses it too."""
    features = spec.feature_columns
    mids = tuple(spec.ranges[j].mid for j in features)
    halves = tuple(spec.ranges[j].half for j in features)
    alpha, rho = spec.alphas[0], spec.rho
    l1 = tuple(alpha * rho / h for h in halves) + (0.0,)
    ridge = tuple(alpha * (1 - rho) / h**2 for h in halves) + (0.0,)
    outer = spec.iterations or DEFAULT_OUTER_ITERATIONS
    has_l1 = rho > 0
    first, later = admm_counts
    admm = tuple((first if k == 0 else later) if has_l1 else 0 for k in range(outer))
    checks = tuple(STOP_CHECK_FROM <= k + 1 < outer for k in range(outer))
    polish = tuple(k >= outer - POLISH_LAST or checks[k] for k in range(outer))
    d1 = len(features) + 1
    # Jacobi-scaled Hessians have diagonal ≤ 1 (s ≤ s₀ for every row): λ_max ≤ d + 1.
    ns_k = ns_iterations(d1 + ADMM_RHO, ADMM_RHO)
    ns_solve = ns_iterations(float(d1), EIGENVALUE_FLOOR)
    return GlmPlan(
        spec.kind,
        n_rows,
        len(features),
        alpha,
        mids,
        halves,
        l1,
        ridge,
        admm,
        polish,
        ns_k,
        ns_solve,
        balanced,
        hessian_start,
        checks=checks,
    )
