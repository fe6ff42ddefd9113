"""The chunked Shamir input (one party, threshold 0: a share is the value mod p), as rows and as
per-fold moments, over enough chunks to fill the look-ahead."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.lasso.mpc.secure_input import CHUNK_ROWS, LOOKAHEAD_CHUNKS, share_and_multiply
from services.lasso.mpc.secure_ops import FieldOps
from services.lasso.mpc.secure_rows import share_rows

ROWS = (LOOKAHEAD_CHUNKS + 2) * CHUNK_ROWS + 7


def _table(columns: int) -> Any:
    rng = np.random.default_rng(3)
    table = rng.integers(-(2**62), 2**62, size=(ROWS, columns)).astype(object) * (2**40)  # beyond int64
    table[:, -1] = 0
    return table


def test_rows_are_the_table_mod_p_and_progress_reaches_every_row(mpc: Any) -> None:
    ops = FieldOps(mpc, mpc.SecFld(2**127 - 1))
    table, seen = _table(3), list[int]()
    rows = mpc.run(share_rows(ops, table, [frozenset({2})], seen.append))
    assert (rows == table % ops.p).all()
    assert seen == sorted(seen) and seen[-1] == ROWS and len(seen) == -(-ROWS // CHUNK_ROWS)


def test_fold_moments_are_the_folds_gram_and_sums_mod_p(mpc: Any) -> None:
    ops = FieldOps(mpc, mpc.SecFld(2**127 - 1))
    table = _table(3)
    folds = [(0, CHUNK_ROWS + 5), (CHUNK_ROWS + 5, 3 * CHUNK_ROWS), (3 * CHUNK_ROWS, ROWS)]
    sums = mpc.run(share_and_multiply(ops, table, folds, [frozenset()]))
    for (start, stop), fold in zip(folds, sums, strict=True):
        x = table[start:stop] % ops.p
        assert fold.rows == stop - start
        assert (fold.gram == (x.T @ x) % ops.p).all()
        assert (fold.sums == x.sum(axis=0) % ops.p).all()


def test_a_nonzero_column_declared_zero_is_refused(mpc: Any) -> None:
    ops = FieldOps(mpc, mpc.SecFld(2**127 - 1))
    with pytest.raises(ValueError, match="not zero"):
        mpc.run(share_rows(ops, _table(3), [frozenset({0})]))
    with pytest.raises(ValueError, match="not zero"):
        mpc.run(share_and_multiply(ops, _table(3), [(0, ROWS)], [frozenset({1})]))
