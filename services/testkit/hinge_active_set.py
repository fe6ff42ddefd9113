"""A plaintext evaluation of an active-set finishing step for the SVM's plain hinge (tests and studies only).

The objective and coordinates are those of ``hinge_reference``: f(v) = (1/m)·Σ max(0, 1 − t_i) +
½·vᵀΓv, t_i = a_iᵀv, a_i = ỹ_i·x̃_i, Γ = diag(γ, 0). The method works on (d+1)-sized aggregates only,
so that a secure version never opens the row partition nor gathers rows:

* warm start: ``warm_steps`` generalised Newton steps of the squared hinge from v = 0 (the secure
  SVM's own iterates);
* each active-set pass classifies every row by one score, the primal-dual active-set rule
  s_i = β_i + (1 − t_i)/τ with β_i the row's multiplier from the previous pass (1 below the margin,
  0 beyond, the recovered value on it; ½ before the first pass): L = {s > 1}, R = {s < 0}, S otherwise
  (two comparisons per row), and sums g = (1/m)·Σ_L a_i, M = Σ_S a_i·a_iᵀ, c = Σ_S a_i;
* the equality-constrained QP of the partition, min ½vᵀΓv − gᵀv s.t. t_i = 1 on S, is solved by the
  method of multipliers on those aggregates: (Γ + ρ'M + εe_be_bᵀ)·v_k = g + ρ'c + z_k + ε·b_pass·e_b,
  z_{k+1} = z_k + ρ'(c − M·v_k) (ρ' = ρ/m; the ε-term only fixes b when S is empty). The S rows'
  multipliers are then β_i = m·ρ'·Σ_k (1 − a_iᵀv_k) = m·ρ'·(K − a_iᵀ·Σ_k v_k): one dot product per
  row with one aggregate, so stationarity Γv = (1/m)·Σ_i β_i·a_i holds by construction;
* a final pass checks a certificate (``certify``): with β clipped to [0, 1], the row gaps
  ε_i = max(0, 1 − t_i) − β_i·(1 − t_i) ≥ 0 and the residual r = Γv − (1/m)·Σ β_i·a_i bound the
  distance to the optimum: for every v', f(v') ≥ f(v) + rᵀ(v' − v) + ½‖ŵ' − ŵ‖²_Γ − ε, so at v*
  ‖ŵ − ŵ*‖_Γ ≤ 2‖Γ^(−½)r_ŵ‖ + √(2ε) once r_b = 0, and α·‖w − w*‖² = ‖ŵ − ŵ*‖²_Γ on the original
  scale. r_b = −(1/m)·Σβ_i·ỹ_i is absorbed by moving the β of the rows with 0 < β < 1 (room permitting), which costs
  |r_b|·max |1 − t_i| in ε and |r_b|·max |a_i| in r over those rows.

Evaluated variants (``ActiveSetSchedule``): the warm start (squared-hinge steps, then optional softplus
steps), τ, ρ, K, a proximal term π/2·‖v − v_pass‖²_H in the warm start's last Hessian, a relaxation
of the β update, and freezing the rows far from the margin at the start. ``quantum`` simulates the
secure fit's fixed point (2^−40): every per-row value and aggregate is floored and then off by
−1 … +2 units (the three-party truncation), sums carry √n units of noise, and each (d+1)-sized solve
(Jacobi-scaled, as Newton–Schulz runs it) sees (d+1) units of perturbation.

Result (docs/adr/0014-svm-hinge-loss.md): exact from the optimum's partition, but no fixed schedule of
≤ 10 passes finds that partition (≤ 1 of 10 problems certified); the certificate is sound throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.testkit.glm_reference import Rows

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

__all__ = ["ActiveSetFit", "ActiveSetSchedule", "Certificate", "certify", "finish_hinge", "solve_hinge_active_set"]

#: The weight of the proximal term on b: only matters when S is empty (then Γ + ρ'M is singular in b).
INTERCEPT_PROXIMAL = 1e-9


@dataclass(frozen=True)
class ActiveSetSchedule:
    """A fixed schedule: squared-hinge warm steps, then active-set passes, then one certificate pass."""

    warm_steps: int = 4
    softplus: tuple[float, ...] = ()  # then one plain softplus Newton step per δ (``solve_hinge_softplus``)
    passes: int = 5
    window: float = 0.25  # τ: the PDAS rule's 1/κ (rows within τ of the margin may join S)
    rho: float = 1.0  # ρ: the penalty is (ρ/m)·M, so m·ρ' = ρ is the scale of the S rows' β
    multiplier_updates: int = 3  # K solves per pass (the method of multipliers), no pass over the rows
    relaxation: float = 1.0  # θ: β ← (1 − θ)·β + θ·β_pass (1 is the plain primal-dual active-set rule)
    freeze: float | None = None  # rows beyond this distance |t − 1| at the warm start keep their side
    proximal: float = 0.0  # π: a proximal term π/2·‖v − v_pass‖²_H, H the warm start's last Hessian
    quantum: float | None = None  # 2^−40 to simulate the fixed point

    @property
    def row_passes(self) -> int:
        """Passes over the rows: warm steps + active-set passes + the certificate pass."""
        return self.warm_steps + len(self.softplus) + self.passes + 1


@dataclass(frozen=True)
class Certificate:
    """The certificate's bound on max|w − w*| (original scale) and whether it meets the relative goal."""

    holds: bool
    error_bound: float  # ≥ ‖w − w*‖₂ ≥ max|w − w*| on the original scale
    relative_bound: float  # error_bound / (max|w| − error_bound), inf when that is ≤ 0
    gap: float  # ε including the absorbed intercept residual
    residual: float  # ‖Γ^(−½)·r_ŵ‖ including the absorbed intercept residual


@dataclass(frozen=True)
class ActiveSetFit:
    v: Vector
    beta: Vector  # the rows' multipliers from the last pass (what the certificate was checked with)
    certificate: Certificate
    row_passes: int
    margin_rows: int  # |S| in the last pass
    changes: tuple[int, ...]  # rows whose class changed, per active-set pass


class _FixedPoint:
    """The fixed-point error model (or exact arithmetic when quantum is None)."""

    def __init__(self, quantum: float | None, seed: int) -> None:
        self.quantum = quantum
        self.rng = np.random.default_rng(seed)

    def value(self, x: npt.ArrayLike) -> Vector:
        """A per-row or aggregate value: floored, then −1 … +2 units off (the three-party truncation)."""
        x = np.asarray(x, dtype=np.float64)
        if self.quantum is None:
            return x
        q = self.quantum
        return np.asarray((np.floor(x / q) + self.rng.integers(-1, 3, size=x.shape)) * q)

    def sum(self, x: npt.ArrayLike, terms: int) -> Vector:
        """An aggregate of ``terms`` truncated products: √terms units of noise, then a truncation."""
        x = np.asarray(x, dtype=np.float64)
        if self.quantum is None:
            return x
        noise = self.rng.standard_normal(x.shape) * math.sqrt(max(terms, 1)) * self.quantum
        return self.value(x + noise)

    def solve(self, matrix: Matrix, rhs: Vector) -> Vector:
        """A (d+1)-sized solve, as the secure fit does it (Newton–Schulz on the Jacobi-scaled matrix):
        the scaled matrix and right-hand side perturbed by (d+1) units each."""
        if self.quantum is None:
            return np.asarray(np.linalg.solve(matrix, rhs))
        d1 = len(rhs)
        scale = 1 / np.sqrt(np.diag(matrix))
        scaled = scale[:, None] * matrix * scale[None, :]
        noise = self.quantum * d1
        scaled = scaled + noise * self.rng.uniform(-1, 1, (d1, d1))
        u = np.linalg.solve(scaled, scale * rhs + noise * self.rng.uniform(-1, 1, d1))
        return self.value(scale * u)


def squared_hinge_steps(rows: Rows, ridge: Vector, steps: int, fp: _FixedPoint) -> tuple[Vector, Matrix]:
    """``steps`` generalised Newton steps of the squared hinge from v = 0 (the secure SVM's iterates),
    and the loss's last Hessian (1/m)·Σ 2a_i·x̃_i·x̃_iᵀ."""
    m, d1 = rows.x.shape
    v = np.zeros(d1)
    curvature = np.eye(d1)
    for _ in range(steps):
        eta = fp.value(rows.x @ v)
        active = (1 - rows.y * eta > 0).astype(np.float64)
        residual = 2 * active * (eta - rows.y)
        gradient = fp.sum(rows.x.T @ residual / m, m) + ridge * v
        curvature = fp.sum((rows.x.T * (2 * active)) @ rows.x / m, m)
        v = v - fp.solve(curvature + np.diag(ridge), gradient)
    return v, curvature


def softplus_steps(
    rows: Rows, ridge: Vector, v: Vector, deltas: tuple[float, ...], fp: _FixedPoint
) -> tuple[Vector, Vector, Matrix]:
    """One plain Newton step per δ on the softplus-smoothed hinge; also the rows' σ(μ/δ) at the last step's
    start, the smoothed fit's estimate of the multipliers β (``hinge_reference.solve_hinge_softplus``),
    and the smoothed loss's last Hessian (1/m)·Σ σ(1 − σ)/δ·x̃_i·x̃_iᵀ."""
    m, d1 = rows.x.shape
    s = np.full(m, 0.5)
    curvature = np.eye(d1)
    for delta in deltas:
        mu = 1 - fp.value(rows.y * (rows.x @ v))
        s = fp.value(np.exp(-np.logaddexp(0.0, -mu / delta)))  # σ(μ/δ)
        gradient = delta * (fp.sum(rows.x.T @ (-rows.y * s) / m, m) + ridge * v)
        hessian = fp.sum((rows.x.T * (s * (1 - s))) @ rows.x / m, m)
        v = v - fp.solve(hessian + delta * np.diag(ridge), gradient)
        curvature = hessian / delta
    return v, s, curvature


def solve_hinge_active_set(
    rows: Rows, ridge: Vector, halves: Vector, schedule: ActiveSetSchedule = ActiveSetSchedule(), seed: int = 0
) -> ActiveSetFit:
    """The fixed schedule: warm start, ``passes`` active-set passes, the certificate at the end."""
    fp = _FixedPoint(schedule.quantum, seed)
    v, curvature = squared_hinge_steps(rows, ridge, schedule.warm_steps, fp)
    beta = np.full(rows.x.shape[0], 0.5)  # before the first pass: the plain window |t − 1| ≤ τ/2
    if schedule.softplus:
        v, beta, curvature = softplus_steps(rows, ridge, v, schedule.softplus, fp)
    return finish_hinge(rows, ridge, halves, v, beta, curvature, schedule, fp)


def finish_hinge(
    rows: Rows,
    ridge: Vector,
    halves: Vector,
    v: Vector,
    beta: Vector,
    curvature: Matrix,
    schedule: ActiveSetSchedule,
    fp: _FixedPoint | None = None,
) -> ActiveSetFit:
    """``schedule.passes`` active-set passes from (v, β), then the certificate (the warm start is the caller's)."""
    fp = fp or _FixedPoint(schedule.quantum, 0)
    m, d1 = rows.x.shape
    signed = rows.x * rows.y[:, None]  # a_i = ỹ_i·x̃_i
    proximal = schedule.proximal * curvature
    proximal[-1, -1] += INTERCEPT_PROXIMAL
    rho = schedule.rho / m
    previous: Vector | None = None
    changes = []
    margin_rows = 0
    t = fp.value(signed @ v)
    frozen = np.abs(1 - t) > (schedule.freeze if schedule.freeze is not None else np.inf)
    frozen_below = frozen & (t < 1)
    for _ in range(schedule.passes):
        t = fp.value(signed @ v)
        score = fp.value(beta + (1 - t) / schedule.window)
        below = np.where(frozen, frozen_below, score > 1)
        beyond = np.where(frozen, ~frozen_below, score < 0)
        margin = ~below & ~beyond
        classes = np.where(below, 0.0, np.where(beyond, 2.0, 1.0))
        if previous is not None:
            changes.append(int(np.sum(classes != previous)))
        previous = classes
        margin_rows = int(margin.sum())
        g = fp.sum(signed[below].sum(axis=0) / m, m)
        big_m = fp.sum(signed[margin].T @ signed[margin], m)
        c = fp.sum(signed[margin].sum(axis=0), m)
        system = np.diag(ridge) + rho * big_m + proximal
        z, total, anchor = np.zeros(d1), np.zeros(d1), proximal @ v
        for _k in range(schedule.multiplier_updates):
            v = fp.solve(system, g + rho * c + z + anchor)
            total = total + v
            z = fp.value(z + rho * (c - big_m @ v))
        # The S rows' multipliers (one dot product per row with Σ_k v_k); L rows 1, R rows 0.
        recovered = fp.value(schedule.rho * (schedule.multiplier_updates - signed @ total))
        theta = schedule.relaxation
        beta = (1 - theta) * beta + theta * np.where(below, 1.0, np.where(beyond, 0.0, recovered))
    certificate = certify(rows, ridge, halves, v, beta)
    return ActiveSetFit(v, beta, certificate, schedule.row_passes, margin_rows, tuple(changes))


def certify(
    rows: Rows,
    ridge: Vector,
    halves: Vector,
    v: Vector,
    beta: Vector,
    goal: float = 1e-3,
) -> Certificate:
    """The certificate pass at v with the last pass's multipliers β (clipped to [0, 1]).

    Per row: t_i, [t_i < 1], the clip of β_i (comparisons) and ε_i; aggregates: ε, Σβ_i·a_i, the room
    the S rows leave to absorb r_b. The secure version compares the two bounds with the goal and
    opens one bit; here the bounds themselves are returned.
    """
    m = rows.x.shape[0]
    signed = rows.x * rows.y[:, None]
    t = signed @ v
    b = np.clip(beta, 0.0, 1.0)
    gap = float(np.mean(np.maximum(0.0, 1 - t) - b * (1 - t)))
    r = ridge * v - signed.T @ b / m
    r_b = float(r[-1])
    inside = (b > 0) & (b < 1)  # the margin rows (β strictly inside) can absorb r_b
    positive = rows.y > 0
    # Moving Σβỹ by m·|r_b| in the needed direction, on rows with β inside [0, 1] only.
    if r_b < 0:  # Σβỹ too large: lower β of positive rows or raise β of negative rows
        room = float(np.sum(np.where(positive, b, 1 - b)[inside]))
    else:
        room = float(np.sum(np.where(positive, 1 - b, b)[inside]))
    if room < m * abs(r_b):
        return Certificate(False, math.inf, math.inf, gap, math.inf)
    near = float(np.max(np.abs(1 - t[inside]))) if inside.any() else 0.0
    size = float(np.max(np.abs(signed[inside][:, :-1]))) if inside.any() else 0.0
    gap += abs(r_b) * near
    gamma = ridge[:-1]
    residual = float(np.sqrt(np.sum((np.abs(r[:-1]) + abs(r_b) * size) ** 2 / gamma)))
    # ‖ŵ − ŵ*‖_Γ ≤ 2·residual + √(2·gap), and ‖ŵ − ŵ*‖²_Γ = α·‖w − w*‖² (γ_j = α/h_j², w_j = ŵ_j/h_j).
    alpha = float(gamma[0] * halves[0] ** 2)
    error = (2 * residual + math.sqrt(2 * max(gap, 0.0))) / math.sqrt(alpha)
    largest = float(np.max(np.abs(v[:-1] / halves)))
    relative = error / (largest - error) if largest > error else math.inf
    return Certificate(relative <= goal, error, relative, gap, residual)
