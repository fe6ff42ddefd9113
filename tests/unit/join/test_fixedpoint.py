"""Fixed-point encoding: exact round trips, extremes, range checks without values in errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.join.core.columns import ColumnSpec
from services.join.core.errors import NonFiniteError, OutOfRangeError, SpecError
from services.join.core.fixedpoint import FixedPointFormat, check_range, decode, decode_value, encode, encode_value

FMT = FixedPointFormat()
LIMIT = 2.0**31
TOP = float(np.nextafter(LIMIT, 0.0))  # largest float64 below 2^31: 2^31 − 2^−22
WIDE = ColumnSpec("wide", -LIMIT, TOP)

finite = st.floats(min_value=-LIMIT, max_value=TOP, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=20))
def test_round_trip_is_exact_rounding(xs: list[float]) -> None:
    values = np.array(xs, dtype=np.float64).reshape(-1, 1)
    encoded = encode(values, [WIDE])
    assert encoded.dtype == np.uint64
    back = decode(encoded)
    expected = np.rint(values * 2.0**32) / 2.0**32
    assert np.array_equal(back, expected)
    assert np.all(np.abs(back - values) <= 2.0**-33)


@given(finite)
def test_matrix_and_scalar_agree(x: float) -> None:
    encoded = encode(np.array([[x]]), [WIDE])
    assert int(encoded[0, 0]) == encode_value(x)
    assert decode_value(encode_value(x)) == decode(encoded)[0, 0]
    assert encode_value(x) == round(x * 2**32) + 2**63


def test_extremes() -> None:
    encoded = encode(np.array([[-LIMIT], [0.0], [TOP]]), [WIDE])
    assert [int(v) for v in encoded[:, 0]] == [0, 2**63, 2**64 - 2**10]
    assert decode(encoded)[:, 0].tolist() == [-LIMIT, 0.0, TOP]


def test_decode_accepts_python_ints() -> None:
    assert decode([2**64 - 2**10, 0, 2**63]).tolist() == [TOP, -LIMIT, 0.0]


def test_unrepresentable_declared_range() -> None:
    with pytest.raises(SpecError):
        encode(np.zeros((1, 1)), [ColumnSpec("big", 0, LIMIT)])
    with pytest.raises(SpecError):
        FixedPointFormat(8, 16).check_columns([ColumnSpec("c", 0, 127.999)])  # rounds to 2^15
    FixedPointFormat(8, 16).check_columns([ColumnSpec("c", -128, 127.99)])


def test_small_format_round_trip() -> None:
    fmt = FixedPointFormat(8, 16)
    col = ColumnSpec("c", -128, 127.99)
    values = np.array([[-128.0], [-0.5], [0.0], [127.99]])
    encoded = encode(values, [col], fmt)
    assert int(encoded.max()) < 2**16
    assert np.allclose(decode(encoded, fmt), values, atol=2**-9)


def test_out_of_range_names_row_and_column_not_value() -> None:
    cols = [ColumnSpec("age", 0, 120), ColumnSpec("bmi", 10, 60)]
    values = np.array([[30.0, 22.0], [40.0, 61.4375]])
    with pytest.raises(OutOfRangeError) as info:
        encode(values, cols, row_numbers=[2, 9])
    assert info.value.row == 9 and info.value.column == "bmi"
    assert "61" not in str(info.value) and "row 9" in str(info.value)


def test_nan_and_inf_are_reported_as_non_finite() -> None:
    cols = [ColumnSpec("a", 0, 1)]
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NonFiniteError) as info:
            check_range(np.array([[0.5], [bad]]), cols)
        assert info.value.row == 2


def test_shape_mismatch() -> None:
    with pytest.raises(SpecError):
        check_range(np.zeros((2, 3)), [ColumnSpec("a", 0, 1)])


def test_format_validation() -> None:
    with pytest.raises(SpecError):
        FixedPointFormat(32, 65)
    with pytest.raises(SpecError):
        FixedPointFormat(63, 64)
