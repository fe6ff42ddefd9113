"""The public plan of a Poisson fit (log link): every constant of the algorithm, from
the study (spec) and the joined count m only. Followed step by step by
``services/testkit/glm_reference.fit_poisson_plain`` (float64) and
``services/lasso/mpc/secure_poisson.py`` (MPyC). Nothing here depends on patient data.

Objective (``params``): (1/m)·Σ (e^η_i − y_i·η_i) + α·ρ·‖w‖₁ + α·(1−ρ)/2·‖w‖², η = xᵀw + b.
The coordinates are the logistic fit's (``glm_plan``): x̃ = [x̂ − μ̂, 1] ∈ [−2, 2].

Why Poisson needs more than the logistic plan: its Hessian (1/m)·X̃ᵀdiag(μ)X̃ scales with
the mean count, which is secret, and Newton from v = 0 (μ = 1) overshoots by about ȳ.

1. Start. The intercept-only optimum is b = log ȳ. A coarse secure logarithm: ȳ is
   compared with the public grid e^(t_k), t_k = t₀ + k·Δ (t₀ = log(1/m) ≤ log ȳ when
   any count is positive, Δ = 1/8, up to log y_max), all at once; the bits β_k = [ȳ ≥ e^(t_k)]
   are monotone, so b₀ = t₀ + Δ/2 + Δ·Σ_{k≥1} β_k, κ₀ = e^(b₀) and 1/κ₀ are linear in the
   bits with public coefficients (exact). |b₀ − log ȳ| ≤ Δ/2.
2. Offset and scale. The fit is made on v = (ŵ, β), η = b₀ + x̃ᵀv, for the objective
   divided by κ₀ (same minimiser):
       f̃(v) = (1/m)·Σ (μ̃_i − ỹ_i·x̃_iᵀv) + pen(ŵ)/κ₀,   μ̃_i = e^(x̃_iᵀv),  ỹ_i = y_i/κ₀,
   so at the start μ̃ = 1 and the Hessian is X̃ᵀX̃/m, the logistic plan's situation with s₀ = 1.
3. Newton steps. The outer iterations are the logistic plan's (proximal Newton, ADMM
   warm-started, polishing in the last three, Newton–Schulz without L1), in the fixed Jacobi
   scaling e of the first Hessian; because μ̃ moves away from 1, every later model is
   re-scaled to unit diagonal (δ = 1/√diag by Newton, from the public bound below).
4. The exponential. μ̃ = e^s, s = x̃ᵀv, as e^(S_HIGH)·e^(−(S_HIGH − s)) with the
   logistic fit's method (Taylor of degree 6 at (S_HIGH − s)/2^8, then 8 squarings),
   evaluated with ``exp_frac`` fractional bits so that μ̃ keeps 2^−40 absolute precision.
   S_HIGH = log(4m) (public). At the optimum Σ μ_i = Σ y_i (the intercept's gradient is
   0), so μ_i/κ₀ ≤ m·ȳ/κ₀ ≤ m·e^(Δ/2) < 4m: s ≤ S_HIGH holds at the optimum; that every
   iterate keeps s ≤ S_HIGH and s > S_HIGH − 512 is assumed (measured, REGRESSION.md), as the
   logistic fit assumes |η| < 512. The optimum's bound says nothing of rows the fit did not see:
   cross-validation evaluates held-out rows with S_HIGH + 10·log 2 (``secure_poisson_cv``), assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.lasso.core.glm_plan import GlmPlan, newton_plan
from services.lasso.core.params import ModelKind, RegressionSpec

#: Step of the start's logarithm grid (|b₀ − log ȳ| ≤ START_STEP/2).
START_STEP = 0.125
#: Smallest G_jj = Var(x̂_j) + γ̃_j the first Jacobi scaling is sized for (σ_j/h_j ≥ 2^−11, as the lasso).
DIAGONAL_FLOOR = 2.0**-22
#: Smallest diagonal of a later model (in the first scaling) the re-scaling is sized for.
RESCALE_FLOOR = 2.0**-10
#: e^(−u) for u ∈ [0, 2^(EXP_SQUARINGS + 1)]: Taylor polynomial of degree EXP_DEGREE at u/2^EXP_SQUARINGS.
EXP_SQUARINGS = 8
EXP_DEGREE = 6
#: Newton y ← y(3 − g·y²)/2 grows y by at most 1.5× a step from a low start, then converges quadratically.
_NEWTON_TAIL = 7


def newton_steps(ratio: float) -> int:
    """Steps of Newton's 1/√g from a start 1/√(upper bound), for upper bound/g ≤ ratio."""
    return math.ceil(math.log(math.sqrt(ratio), 1.5)) + _NEWTON_TAIL


@dataclass(frozen=True)
class PoissonPlan:
    """All public numbers of one Poisson fit: the logistic-style plan plus the start and link constants."""

    glm: GlmPlan  # ℓ1, ridge, ADMM/polish schedule, Newton–Schulz counts; hessian_start = 1
    y_max: float
    thresholds: tuple[float, ...]  # t_k
    s_high: float  # S_HIGH = log(4m)
    first_newton: int  # Newton steps for e = 1/√G¹
    first_start: tuple[float, ...]  # public start ≤ 1/√G¹_jj
    rescale_newton: int  # Newton steps for δ = 1/√diag of a later model
    rescale_start: float  # 1/√(e^S_HIGH + 1)

    @property
    def start_values(self) -> tuple[float, ...]:
        """(b₀, κ₀, 1/κ₀) when ȳ lies in [e^(t_k), e^(t_(k+1))): the midpoint of each grid cell."""
        return tuple(t + START_STEP / 2 for t in self.thresholds)

    @property
    def exp_extra_bits(self) -> int:
        """Fractional bits added for e^(−u) so that e^S_HIGH·e^(−u) keeps the fit's precision."""
        return math.ceil(self.s_high / math.log(2)) + 1

    @property
    def ridge_scale_bound(self) -> float:
        """1/κ₀ ≤ e^(−t₀ − Δ/2) = m·e^(−Δ/2)."""
        return math.exp(-self.start_values[0])


def make_poisson_plan(spec: RegressionSpec, n_rows: int) -> PoissonPlan:
    """The public plan of a Poisson fit of ``spec`` (one alpha) on ``n_rows`` joined rows."""
    if spec.kind is not ModelKind.POISSON:
        raise ValueError("not a Poisson model")
    glm = newton_plan(spec, n_rows, 1.0, False)  # μ̃ = 1 at v = 0 (the fit is offset by b₀)
    y_max = spec.ranges[spec.target].max
    low = math.log(1 / n_rows)
    count = math.ceil((math.log(max(y_max, 1.0)) - low) / START_STEP) + 1
    thresholds = tuple(low + k * START_STEP for k in range(count))
    s_high = math.log(4 * n_rows)
    inverse_kappa = math.exp(-(thresholds[0] + START_STEP / 2))
    # G¹_jj = Var(x̃_j) + γ_j/κ₀ ≤ 4 + γ_j·(1/κ₀ bound), and ≥ DIAGONAL_FLOOR.
    bounds = [4 + g * inverse_kappa for g in glm.ridge[:-1]]
    first_newton = max(newton_steps(b / DIAGONAL_FLOOR) for b in bounds) if bounds else 0
    rescale_bound = math.exp(s_high) + 1
    return PoissonPlan(
        glm=glm,
        y_max=y_max,
        thresholds=thresholds,
        s_high=s_high,
        first_newton=first_newton,
        first_start=tuple(1 / math.sqrt(b) for b in bounds),
        rescale_newton=newton_steps(rescale_bound / RESCALE_FLOOR),
        rescale_start=1 / math.sqrt(rescale_bound),
    )
