"""The test dealer produces the join's share layout and reconstructs the table."""

from __future__ import annotations

import numpy as np
import pytest

from services.testkit.dealer import OFFSET, deal, decode, encode, reconstruct
from services.testkit.synthetic import make_joined_table


def test_shares_reconstruct_the_permuted_table() -> None:
    study = make_joined_table(200, 4, seed=1)
    dealt = deal(study.table, study.owners, np.random.default_rng(5))
    assert np.array_equal(reconstruct(dealt.shares), np.rint(dealt.table * 2.0**32) / 2.0**32)
    assert sorted(map(tuple, dealt.table.tolist())) == sorted(map(tuple, study.table.tolist()))
    assert not np.array_equal(dealt.table, study.table)  # rows permuted


def test_owner_holds_zero_of_its_columns_and_masks_are_wide() -> None:
    study = make_joined_table(100, 4, seed=2)
    share_a, share_b, share_h = deal(study.table, study.owners, np.random.default_rng(6)).shares
    for j, owner in enumerate(study.owners):
        own, other = (share_a, share_b) if owner == 0 else (share_b, share_a)
        assert all(v == 0 for v in own[:, j])
        assert max(abs(v) for v in share_h[:, j]) > 2**100
        assert all(v > 0 for v in other[:, j])


def test_encoding_matches_the_join() -> None:
    values = np.array([[0.0, -1.5, 2.0**-33, 123.456]])
    encoded = encode(values)
    assert encoded[0, 0] == OFFSET and encoded[0, 1] == OFFSET - 3 * 2**31
    assert np.array_equal(decode(encoded), np.rint(values * 2.0**32) / 2.0**32)
    with pytest.raises(ValueError):
        encode(np.array([[2.0**31]]))
