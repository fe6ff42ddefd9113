"""Input of the join's additive integer shares as Shamir-shared *rows* (for the GLMs).

The lasso needs only the Gram matrix of the table, so ``secure_input`` sums the
received shares into local Gram products and forgets the rows. A GLM evaluates its
link function on every row in every iteration, so here every party keeps its Shamir
shares [X′] of the whole m × c table (degree t, mod p). The protocol is the same as
``secure_input`` (each party Shamir-shares its integer share matrix mod p, sends party j
its share as fixed-width little-endian limbs, and sums what it receives; columns a party
is publicly known to hold only zeros of are not sent), and so is its security.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.limbs import LIMB_BITS, bytes_to_limbs, ints_to_bytes, limb_count, normalise
from services.lasso.mpc.secure_input import CHUNK_ROWS, LOOKAHEAD_CHUNKS, shamir_split
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
    mpc, p = ops.mpc, ops.p
    parties, pid = ops.parties, mpc.pid
    rows, c = table.shape
    mine = sorted(zero_columns[pid])
    if mine and np.any(np.asarray(table, dtype=object)[:, mine] != 0):
        raise ValueError("this party's shares are not zero in the columns it is declared not to hold")
    limbs = limb_count(p.bit_length() + 2)  # a sum of `parties` shares < 3p
    sent = [[j for j in range(c) if j not in zero_columns[i]] for i in range(parties)]
    out = np.zeros((rows, c), dtype=object)
    senders = [i for i in range(parties) if i != pid]
    pending: deque[tuple[int, int, bytes, list[Any]]] = deque()

    async def absorb(start: int, stop: int, own: bytes, received: list[Any]) -> None:
        inbox = await mpc.gather(received[pid]) if parties > 1 else []
        for j in senders:
            await mpc.gather(received[j])
        part = np.zeros((stop - start, c, limbs), dtype=np.int64)
        for i, data in [(pid, own), *zip(senders, inbox, strict=True)]:
            if sent[i]:
                part[:, sent[i], :] += bytes_to_limbs(data, limbs).reshape(stop - start, len(sent[i]), limbs)
        out[start:stop] = limbs_to_ints(normalise(part)) % p
        if on_rows is not None:
            on_rows(stop)

    for start in range(0, rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, rows)
        block = np.asarray(table[start:stop], dtype=object)[:, sent[pid]] % p
        payloads = [ints_to_bytes(s, limbs) for s in shamir_split(block, p, ops.t, parties)]
        received = []
        for j in range(parties):
            routes = {i: ([j] if i != j else []) for i in range(parties)}
            received.append(mpc.transfer(payloads[j] if pid != j else None, sender_receivers=routes))
        pending.append((start, stop, payloads[pid], received))
        if len(pending) > LOOKAHEAD_CHUNKS:
            await absorb(*pending.popleft())
    while pending:
        await absorb(*pending.popleft())
    return out
