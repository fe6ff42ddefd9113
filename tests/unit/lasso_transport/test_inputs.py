"""A party's share blocks over the study's columns."""

from __future__ import annotations

import pytest

from services.lasso.core.blocks import ShareBlock, ShareError
from services.lasso.core.inputs import assemble, column_owners, study_columns
from tests.unit.gateway.specs import make_spec


def test_study_columns_are_features_then_target_and_owned_by_their_owner():
    spec = make_spec()
    assert study_columns(spec) == ("gp_visits", "prescriptions", "exercise_hours", "smoker", "bmi", "hospital_days")
    assert column_owners(spec) == (0, 0, 1, 1, 1, 0)


def test_assemble_places_blocks_and_fills_zeros():
    columns = ("a", "b", "c")
    blocks = [ShareBlock(("c",), [[5], [6]], 14), ShareBlock(("a",), [[-1], [-2]], 14)]
    assert assemble(blocks, columns) == [[-1, 0, 5], [-2, 0, 6]]


def test_assemble_refuses_unknown_or_repeated_columns():
    with pytest.raises(ShareError):
        assemble([ShareBlock(("z",), [[1]], 14)], ("a",))
    with pytest.raises(ShareError):
        assemble([ShareBlock(("a",), [[1]], 14), ShareBlock(("a",), [[2]], 14)], ("a",))
