"""A test-only MPC program whose MPyC coroutine fails with a message holding a 'value'."""

from __future__ import annotations

from typing import Any

from riskmesh.v1 import lasso_pb2
from services.lasso.worker.program import RunContext

SECRET = "4242.4242"


async def run(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    secint = mpc.SecInt(32)

    @mpc.coroutine
    async def fails(x):  # type: ignore[no-untyped-def]  (MPyC reads a return annotation as the result type)
        await mpc.returnType(secint)
        raise ValueError(f"patient value {SECRET}")

    await mpc.output(fails(secint(1)))
    return lasso_pb2.ModelResult()
