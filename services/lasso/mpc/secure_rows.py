"""Input of the join's additive integer shares as Shamir-shared *rows* (for the GLMs).

The lasso needs only the Gram matrix of the table, so ``secure_input`` sums the
received shares into local Gram products and forgets the rows. A GLM evaluates its
link function on every row in every iteration, so here every party keeps its Shamir
shares [X′] of the whole m × c table (degree t, mod p). The protocol is the lasso's,
``secure_input.share_chunks`` (each party Shamir-shares its integer share matrix mod p,
sends party j its share as fixed-width little-endian limbs, and sums what it receives;
columns a party is publicly known to hold only zeros of are not sent), and so is its security.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from services.lasso.core.limbs import LIMB_BITS
from services.lasso.mpc.secure_input import share_chunks
from services.lasso.mpc.secure_ops import FieldOps

ObjectArray = npt.NDArray[np.object_]


def limbs_to_ints(limbs: npt.NDArray[np.int64]) -> ObjectArray:
    """Σ_a 2^(16a)·L[..., a] as Python ints (normalised limbs, last axis = limbs)."""
    out = np.zeros(limbs.shape[:-1], dtype=object)
    for a in range(limbs.shape[-1] - 1, -1, -1):
        out = (out << LIMB_BITS) + limbs[..., a].astype(object)
    return out


async def share_rows(
    ops: FieldOps,
    table: ObjectArray,
    zero_columns: Sequence[frozenset[int]],
    on_rows: Callable[[int], None] | None = None,
) -> ObjectArray:
    """This party's degree-t Shamir shares (m × c, mod p) of the encoded joined table X′."""
    out = np.zeros(table.shape, dtype=object)

    def keep(_fold: int, start: int, stop: int, part: npt.NDArray[np.int64]) -> None:
        out[start:stop] = limbs_to_ints(part) % ops.p

    await share_chunks(ops, table, [(0, table.shape[0])], zero_columns, keep, on_rows)
    return out
