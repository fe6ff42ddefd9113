"""Input of the join's additive integer shares into MPyC, and the local Gram products.

Maths. Party i holds an integer matrix S_i (m × c) with S_0 + S_1 + S_2 = X′
over the integers, |S_i| < 2^106. Reducing mod the prime p of the input field
keeps the identity mod p, and X′ < 2^64 < p, so the field sum *is* the
encoded table. Each party Shamir-shares S_i mod p (degree t, fresh uniform
coefficients from the OS CSPRNG — 64 extra bits reduced mod p), sends party j
its share, and sums the shares it receives: the result is party j's Shamir
share [X′]_j. This is MPyC's ``input`` with a lean encoding (fixed-width
little-endian bytes instead of pickled Python ints, in chunks of rows) — the
received bytes are read directly as 16-bit limbs (``limbs``), never as Python
ints.

Local products. For each fold (a contiguous block of the permuted rows) the
party computes its share of P = Σ_r x′_r x′_rᵀ (degree 2t: a product of two
degree-t sharings) exactly with float64 BLAS on limbs, and of s = Σ_r x′_r
(degree t). Offsets need no care: the centred moment m·P − s sᵀ is invariant
to adding a constant to a column, and the means are corrected publicly.

Columns a party is known (publicly, by the join protocol) to hold only zeros
of are not sent; receivers count them as zero.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from services.lasso.core.limbs import (
    bytes_to_limbs,
    column_sums_limbs,
    combine_gram,
    combine_sums,
    gram_limbs,
    ints_to_bytes,
    limb_count,
    normalise,
)
from services.lasso.core.params import RegressionSpec, SpecError, check_table_shape
from services.lasso.mpc.secure_ops import FieldOps, random_below

ObjectArray = npt.NDArray[np.object_]

#: Rows per message (≈ 0.3–1 MB at c = 11, fits any transport's message limit).
CHUNK_ROWS = 2048
#: Chunks sent ahead of the one being absorbed.
LOOKAHEAD_CHUNKS = 4


async def agreed_table(mpc: Any, shares: npt.ArrayLike, spec: RegressionSpec) -> ObjectArray:
    """This party's share matrix, once it has the spec's shape and every party runs the same
    public parameters on a table of the same shape (one round).

    A mismatch would otherwise desynchronise the parties' messages and hang or produce
    garbage; the digest of public values reveals nothing.
    """
    table = np.asarray(shares, dtype=object)
    if table.ndim != 2:
        raise ValueError("shares must be a matrix")
    rows, columns = table.shape
    check_table_shape(rows, columns, spec)
    digest = hashlib.sha256(repr((spec, rows, columns)).encode()).digest()
    digests = await mpc.transfer(digest)
    if any(other != digest for other in digests):
        raise SpecError("the parties disagree on the regression parameters or the joined table's shape")
    return table


def zero_columns(spec: RegressionSpec, parties: int) -> list[frozenset[int]]:
    """Per party id, the columns it publicly holds only zeros of (the other owner's columns;
    none when the spec names no owners or the parties are not the three of a study)."""
    if not spec.column_owners or parties != 3:
        return [frozenset[int]() for _ in range(parties)]
    return [frozenset(j for j, o in enumerate(spec.column_owners) if o == i) for i in range(parties)]


@dataclass(frozen=True)
class FoldSums:
    """This party's shares of one fold's raw moments (x′ = fixed-point encodings)."""

    gram: ObjectArray  # (c, c), degree 2t: Σ_r x′_r x′_rᵀ mod p
    sums: ObjectArray  # (c,), degree t: Σ_r x′_r mod p
    rows: int


def _segments(folds: Sequence[tuple[int, int]], chunk: int) -> list[tuple[int, int, int]]:
    """(fold, start, stop) pieces of at most ``chunk`` rows that never cross a fold."""
    out = []
    for k, (start, stop) in enumerate(folds):
        for lo in range(start, stop, chunk):
            out.append((k, lo, min(lo + chunk, stop)))
    return out


def shamir_split(values: ObjectArray, p: int, t: int, parties: int) -> list[ObjectArray]:
    """Degree-t Shamir shares f(1..parties) of each value (f(0) = value), uniform coefficients."""
    coefficients = [random_below(p, values.size).reshape(values.shape) for _ in range(t)]
    if t == 1:  # f(j) = x + c·j: consecutive shares differ by c (additions only)
        shares, share = [], values
        for _ in range(parties):
            share = (share + coefficients[0]) % p
            shares.append(share)
        return shares
    shares = []
    for j in range(1, parties + 1):
        share = values.copy()
        for e, coefficient in enumerate(coefficients, start=1):
            share = share + coefficient * pow(j, e)
        shares.append(share % p)
    return shares


def share_limbs(p: int) -> int:
    """Limbs of a received share sum (a sum of at most three shares mod p, < 3p)."""
    return limb_count(p.bit_length() + 2)


async def share_chunks(
    ops: FieldOps,
    table: ObjectArray,
    folds: Sequence[tuple[int, int]],
    zero_columns: Sequence[frozenset[int]],
    absorb: Callable[[int, int, int, npt.NDArray[np.int64]], None],
    on_rows: Callable[[int], None] | None = None,
) -> None:
    """Shamir-share this party's integer share matrix, chunk by chunk, and hand each chunk of
    this party's degree-t shares [X′] to ``absorb(fold, start, stop, limbs)`` (limbs: normalised,
    (stop − start) × c × ``share_limbs(p)``).

    Every party calls this with its own ``table`` (m × c Python ints) and the
    same public ``folds`` and ``zero_columns`` (per party id, the columns it is
    known to hold zeros of). Chunks never cross a fold.
    """
    mpc, p = ops.mpc, ops.p
    parties, pid = ops.parties, mpc.pid
    c = table.shape[1]
    mine = sorted(zero_columns[pid])
    if mine and np.any(np.asarray(table, dtype=object)[:, mine] != 0):
        raise ValueError("this party's shares are not zero in the columns it is declared not to hold")
    limbs = share_limbs(p)
    sent = [[j for j in range(c) if j not in zero_columns[i]] for i in range(parties)]
    senders = [i for i in range(parties) if i != pid]
    pending: deque[tuple[int, int, int, bytes, list[Any]]] = deque()
    done = 0

    async def receive(k: int, start: int, stop: int, own: bytes, received: list[Any]) -> None:
        nonlocal done
        inbox = await mpc.gather(received[pid]) if parties > 1 else []
        for j in senders:
            await mpc.gather(received[j])
        part = np.zeros((stop - start, c, limbs), dtype=np.int64)
        for i, data in [(pid, own), *zip(senders, inbox, strict=True)]:
            if sent[i]:
                part[:, sent[i], :] += bytes_to_limbs(data, limbs).reshape(stop - start, len(sent[i]), limbs)
        absorb(k, start, stop, normalise(part))
        done += stop - start
        if on_rows is not None:
            on_rows(done)

    for k, start, stop in _segments(folds, CHUNK_ROWS):
        block = np.asarray(table[start:stop], dtype=object)[:, sent[pid]] % p
        payloads = [ints_to_bytes(s, limbs) for s in shamir_split(block, p, ops.t, parties)]
        received = []
        for j in range(parties):
            routes = {i: ([j] if i != j else []) for i in range(parties)}
            received.append(mpc.transfer(payloads[j] if pid != j else None, sender_receivers=routes))
        pending.append((k, start, stop, payloads[pid], received))
        if len(pending) > LOOKAHEAD_CHUNKS:  # keep a few chunks in flight: no lockstep per chunk
            await receive(*pending.popleft())
    while pending:
        await receive(*pending.popleft())


async def share_and_multiply(
    ops: FieldOps,
    table: ObjectArray,
    folds: Sequence[tuple[int, int]],
    zero_columns: Sequence[frozenset[int]],
    on_rows: Callable[[int], None] | None = None,
) -> list[FoldSums]:
    """Shamir-share this party's integer share matrix and return its per-fold local moments
    (arguments as ``share_chunks``)."""
    c, limbs = table.shape[1], share_limbs(ops.p)
    acc_gram = [np.zeros((c, limbs, c, limbs), dtype=np.int64) for _ in folds]
    acc_sums = [np.zeros((c, limbs), dtype=np.int64) for _ in folds]

    def multiply(k: int, start: int, stop: int, part: npt.NDArray[np.int64]) -> None:
        acc_gram[k] += gram_limbs(part)
        acc_sums[k] += column_sums_limbs(part)

    await share_chunks(ops, table, folds, zero_columns, multiply, on_rows)
    return [
        FoldSums(combine_gram(g) % ops.p, combine_sums(s) % ops.p, stop - start)
        for g, s, (start, stop) in zip(acc_gram, acc_sums, folds, strict=False)
    ]
