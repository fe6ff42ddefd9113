"""Fixed-point building blocks and the fused soft-threshold, run in one MPyC process."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_threshold import FusedThreshold, threshold_field_bits

FRAC = 32


def _ops(mpc: Any, bits: int) -> FieldOps:
    kappa = mpc.options.sec_param
    return FieldOps(mpc, mpc.SecFxp(bits - FRAC - kappa - 2, FRAC))


def _signed(rng: random.Random, n: int, bits: int) -> list[int]:
    return [rng.randrange(-(1 << (bits - 1)) + 1, 1 << (bits - 1)) for _ in range(n)]


def test_truncation_multiplication_and_conversion(mpc: Any) -> None:
    rng = random.Random(1)
    big, small = _ops(mpc, 170), _ops(mpc, 130)

    async def run() -> None:
        xs = _signed(rng, 200, 100)
        x = big.public(xs)
        for degree2t in (False, True):
            y = big.signed(await big.open(await big.trunc(x, 40, 101, degree2t=degree2t)))
            assert all(abs(int(v) - (u >> 40)) <= 2 for v, u in zip(y, xs, strict=False))
        a, b = np.array([1.5, -2.25, 0.0]), np.array([-3.0, 0.5, 7.0])
        prod = await big.mul(big.fixed(a, FRAC), big.fixed(b, FRAC), FRAC, 2 * FRAC + 8)
        assert np.allclose(big.to_float(await big.open(prod), FRAC), a * b, atol=1e-9)
        m = np.arange(12, dtype=float).reshape(3, 4) / 7
        vec = np.array([0.5, -1.0, 2.0, 0.25])
        mv = await big.matmul(big.fixed(m, FRAC), big.fixed(vec, FRAC)[:, None], FRAC, 2 * FRAC + 8)
        assert np.allclose(big.to_float(await big.open(mv), FRAC)[:, 0], m @ vec, atol=1e-8)
        values = [v >> 45 for v in xs[:20]]  # |v| < 2^54
        moved = await big.convert(big.public(values), small, 56, shift=3)
        assert [int(v) for v in small.signed(await small.open(moved))] == [v << 3 for v in values]
        bits = await small.less_than_zero(small.public(values), 56)
        assert [int(v) for v in await small.open(bits)] == [int(v < 0) for v in values]

    mpc.run(run())


def test_fused_threshold_equals_soft_threshold(mpc: Any) -> None:
    rng = np.random.default_rng(2)
    kappa_sec = mpc.options.sec_param
    x_bits = 2 * FRAC + 12
    ops = _ops(mpc, threshold_field_bits(kappa_sec, FRAC, x_bits))
    v_true = rng.normal(0, 3, size=(3, 7))
    v_true[0, :3] = [0.25, -0.25, 0.0]  # on and near the thresholds
    kappa = np.full((3, 7), 0.25)
    kappa[1] = np.round(rng.uniform(0, 2, 7) * 2.0**FRAC) / 2.0**FRAC  # exactly representable
    step = FusedThreshold(ops, ops.fixed(kappa, FRAC), FRAC, x_bits, steps=3)

    async def run() -> None:
        for _ in range(3):
            x = ops.fixed(v_true, 2 * FRAC)
            v, z, z_abs, above, below = await step.step(x)
            v_open = ops.to_float(await ops.open(v), FRAC)
            assert np.allclose(v_open, v_true, atol=3 * 2.0**-FRAC)
            soft = v_open - np.clip(v_open, -kappa, kappa)
            assert np.array_equal(ops.to_float(await ops.open(z), FRAC), soft)
            assert np.array_equal(ops.to_float(await ops.open(z_abs), FRAC), np.abs(soft))
            assert np.array_equal(np.asarray(await ops.open(above), dtype=int), (v_open > kappa).astype(int))
            assert np.array_equal(np.asarray(await ops.open(below), dtype=int), (v_open < -kappa).astype(int))

    mpc.run(run())
