"""A small MPC program that checks the transport end to end, with a plaintext oracle.

Each party holds additive integer shares of the joined, fixed-point encoded table
(docs/design.md step 3): over the study's columns (features in `feature_names` order, then
the target), party i's matrix S_i has 0 where it holds nothing, and

    S_0 + S_1 + S_2 = X' = round(X·2^f) + 2^(ℓ−1)     (over the integers).

Inside MPC (secure integers of 256 bits, far above any share) the program sums the
three inputs, removes the public offset, and reveals to the two data owners only:

    c_k = Σ_rows X[:, k]·2^f         (column sums)          → coefficient "sum:<column>"
    p   = Σ_rows X[:, 0]·X[:, 1]·2^2f (one inner product)    → coefficient "inner:<c0>*<c1>"

That exercises `mpc.input` from all three parties, a multiplication round, and
`mpc.output` with receivers, over whatever transport the runtime has. `expected`
computes the same numbers in plaintext from the same matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.inputs import assemble, study_columns
from services.lasso.core.parties import HELPER_PID
from services.lasso.worker.program import RunContext

SECURE_BITS = 256


def offset_of(blocks: Sequence[ShareBlock]) -> int:
    bits = {block.value_bits for block in blocks}
    if len(bits) != 1:
        raise ValueError("share blocks disagree on the value bits")
    return 1 << (bits.pop() - 1)


def expected(table: Sequence[Sequence[int]], offset: int) -> list[int]:
    """The revealed numbers, in plaintext, from the encoded joined table X'."""
    x = [[v - offset for v in row] for row in table]
    sums = [sum(row[k] for row in x) for k in range(len(x[0]))] if x else []
    inner = sum(row[0] * row[1] for row in x)
    return [*sums, inner]


def result_names(columns: Sequence[str]) -> list[str]:
    return [*(f"sum:{c}" for c in columns), f"inner:{columns[0]}*{columns[1]}"]


async def run(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    columns = study_columns(context.spec)
    matrix = assemble(context.shares, columns)
    offset = offset_of(context.shares)
    secint = mpc.SecInt(SECURE_BITS)
    rows, width = len(matrix), len(columns)
    context.report(common_pb2.PHASE_INPUT, 0, 1)
    inputs = mpc.input([secint(v) for row in matrix for v in row])
    joined = mpc.vector_add(mpc.vector_add(inputs[0], inputs[1]), inputs[2])
    x = [joined[r * width : (r + 1) * width] for r in range(rows)]
    x = [[v - offset for v in row] for row in x]
    context.report(common_pb2.PHASE_INPUT, 1, 1)
    context.report(common_pb2.PHASE_GRAM, 0, 1)
    sums = [mpc.sum([row[k] for row in x]) for k in range(width)]
    inner = mpc.in_prod([row[0] for row in x], [row[1] for row in x])
    context.report(common_pb2.PHASE_GRAM, 1, 1)
    context.report(common_pb2.PHASE_REVEAL, 0, 1)
    revealed = await mpc.output([*sums, inner], receivers=[0, 1])
    context.report(common_pb2.PHASE_REVEAL, 1, 1)
    if context.pid == HELPER_PID:
        return lasso_pb2.ModelResult()
    coefficients = [
        lasso_pb2.Coefficient(feature=name, value=float(value))
        for name, value in zip(result_names(columns), revealed, strict=False)
    ]
    return lasso_pb2.ModelResult(coefficients=coefficients, joined=rows, target=columns[-1])
