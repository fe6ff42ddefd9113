"""The solver's round-saving steps, run in one MPyC process: the banded Newton start with the λ
clamp, Newton–Schulz in product form, the truncation straight into F_w and the batched argmin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.lasso.core.plan import ADMM_RHO, ns_iterations
from services.lasso.mpc import secure_solver as solver
from services.lasso.mpc.secure_gram import FRAC_IN
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_regression import _argmin_onehot


def _ops(mpc: Any, bits: int, frac: int = 32) -> FieldOps:
    return FieldOps(mpc, mpc.SecFxp(bits - frac - mpc.options.sec_param - 2, frac))


@pytest.mark.parametrize("doublings", [1, 2, 3, 5, 8, 9, 13, 22, 30, 48])
def test_newton_schulz_steps_add_up_and_cost_fewer_rounds(doublings: int) -> None:
    steps = solver.ns_steps(doublings)
    assert sum(steps) == doublings and all(j >= 1 for j in steps)
    assert steps[0] <= 16 and all(j <= 4 for j in steps[1:])
    rounds = (steps[0] + 1 if steps[0] > 1 else 1) + sum(j + 1 for j in steps[1:])  # X₁, R₀ first; then R₀²
    assert rounds == 1 if doublings == 1 else rounds < 2 * doublings  # plain Newton–Schulz: 2 per doubling
    if doublings >= 4:
        assert steps[-1] == 2  # the last step starts from a small residual


def _unit_diagonal_spd(rng: np.random.Generator, d: int, smallest: float) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    values = np.geomspace(smallest, 1.0, d)
    m = (q * values) @ q.T
    scale = np.sqrt(np.diag(m))
    return m / np.outer(scale, scale)


@pytest.mark.parametrize("d,smallest", [(10, 1e-4), (30, 3e-5)])
def test_newton_schulz_product_form_inverts_ill_conditioned_matrices(mpc: Any, d: int, smallest: float) -> None:
    rng = np.random.default_rng(d)
    m = _unit_diagonal_spd(rng, d, smallest)
    floor = float(np.linalg.eigvalsh(m)[0])
    k = ns_iterations(d, floor, float(d))
    x_bits = k + 1
    ops = _ops(mpc, 2 * FRAC_IN + x_bits + 40 + 16, FRAC_IN)
    steps: list[int] = []

    async def run() -> tuple[np.ndarray, np.ndarray]:
        shares = ops.fixed(m, FRAC_IN)[None]
        for unreduced in (False, True):  # unreduced: M as a local product, reduced in the first round
            x, back = await solver._newton_schulz(
                ops, shares, k, float(d), FRAC_IN, x_bits, steps.append, unreduced=unreduced
            )
        return ops.to_float(await ops.open(x), FRAC_IN)[0], ops.to_float(await ops.open(back), FRAC_IN)[0]

    async def plain() -> np.ndarray:  # X ← X(2I − MX), two rounds per doubling (the former code)
        shares = ops.fixed(m, FRAC_IN)[None]
        eye = ops.fixed(2 * np.eye(d), FRAC_IN)
        x = ops.fixed(np.eye(d) / d, FRAC_IN)[None]
        for _ in range(k):
            mx = await ops.matmul(shares, x, FRAC_IN, 2 * FRAC_IN + 8)
            x = await ops.matmul(x, (eye - mx) % ops.p, FRAC_IN, 2 * FRAC_IN + x_bits + 8)
        return ops.to_float(await ops.open(x), FRAC_IN)[0]

    x, back = mpc.run(run())
    assert sum(steps) == 2 * k  # progress: one unit per doubling
    assert np.allclose(back, m, atol=2.0**-39)
    residual = np.linalg.norm(np.eye(d) - m @ x, 2)
    reference = np.linalg.norm(np.eye(d) - m @ mpc.run(plain()), 2)
    assert residual < 1e-8 and residual < 4 * reference, (residual, reference)


def test_banded_newton_start_reaches_one_over_root_g_and_clamps_only_large_lambdas(mpc: Any) -> None:
    """g over the whole documented range 2^−22 … 1 + γ, with ridge shifts; λ = l1/√g around the clamp."""
    rng = np.random.default_rng(5)
    ops = _ops(mpc, 200, FRAC_IN)
    limit = ADMM_RHO * solver.KAPPA_CLAMP
    c_hat = np.concatenate([2.0 ** -rng.uniform(0, 22, 40), [1.0, 2.0**-22, 0.5, 0.25]])
    gamma = np.where(np.arange(c_hat.size) % 3 == 0, rng.uniform(0, 5, c_hat.size), 0.0)
    g = c_hat + gamma
    ratio = np.concatenate([rng.uniform(0.5, 2.0, c_hat.size - 4), [1 - 1e-9, 1 + 1e-9, 1.0, 3.0]])
    l1 = limit * np.sqrt(g) * ratio  # λ = l1/√g = limit·ratio
    g_shares = ops.fixed(g, FRAC_IN)[None]
    clamp_at = np.array([solver.clamp_threshold(a, b) for a, b in zip(l1, gamma, strict=True)])
    params = solver.Params(
        ops.fixed(gamma, FRAC_IN)[None],
        ops.fixed(l1, FRAC_IN)[None],
        None,
        None,
        (1 / np.sqrt(1 + gamma))[None],
        ops.fixed(clamp_at, FRAC_IN)[None],
    )

    async def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        needed = solver._start_bits_needed(1, g.size, params.start, True)
        supply = solver._BitSupply(await ops.random_bits(needed))
        y0, clamp = await solver._banded_start(ops, g_shares, params, True, supply)
        assert clamp is not None
        e = await solver._newton_inverse_sqrt(ops, g_shares, y0, solver.START_NEWTON)
        opened = [ops.to_float(await ops.open(v), FRAC_IN)[0] for v in (y0, e)]
        return opened[0], opened[1], np.array([int(v) for v in (await ops.open(clamp)).ravel()])

    y0, e, clamp = mpc.run(run())
    w0 = g * y0**2
    assert np.all(w0 >= 0.25 - 1e-9) and np.all(w0 < 1.2)
    g_fixed = np.round(g * 2.0**FRAC_IN) / 2.0**FRAC_IN  # the g the MPC holds
    # g·y at frac 40 keeps log₂(g·y·2^40) bits: ~2^−29 relative for g = 2^−22 (as the former 26 steps)
    assert np.max(np.abs(e * np.sqrt(g_fixed) - 1)) < 1e-9
    lam = l1 / np.sqrt(g)
    assert not np.any(clamp.astype(bool) & (lam <= limit))  # never raises a λ below the clamp
    far = np.abs(ratio - 1) > 1e-3
    assert np.array_equal(clamp[far].astype(bool), lam[far] > limit)


def test_truncation_into_the_admm_field(mpc: Any) -> None:
    rng = np.random.default_rng(3)
    big, small = _ops(mpc, 190, FRAC_IN), _ops(mpc, 128)
    values = [int(v) for v in rng.integers(-(2**50), 2**50, 50)]

    async def run() -> list[int]:
        moved = await solver._trunc_convert(big, small, big.public(values), 8, 52)
        return [int(v) for v in small.signed(await small.open(moved))]

    got = mpc.run(run())
    assert all(-1 <= g - (v >> 8) <= 1 for g, v in zip(got, values, strict=True))


@pytest.mark.parametrize(
    "values,best",
    [([3.0, 1.0, 1.0, 2.0], 1), ([5.0, 5.0], 0), ([2.0, 1.0, 0.5], 2), ([0.25], 0), ([4, 3, 2, 1, 0.5, 9, 0.5], 4)],
)
def test_argmin_onehot_picks_the_first_minimum(mpc: Any, values: list[float], best: int) -> None:
    ops = _ops(mpc, 190, FRAC_IN)

    async def run() -> list[int]:
        onehot = await _argmin_onehot(ops, ops.fixed(values, FRAC_IN), FRAC_IN + 8)
        return [int(v) for v in await ops.open(onehot)]

    expected = [0] * len(values)
    expected[best] = 1
    assert mpc.run(run()) == expected
