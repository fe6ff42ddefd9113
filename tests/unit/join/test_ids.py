"""ID normalisation: accepted formats, rejections, and errors that never echo the value."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.join.core.errors import DataError, InvalidIdError
from services.join.core.ids import canonical_id, normalise_birth_date, normalise_postal_code


@pytest.mark.parametrize(
    "text",
    ["1970-01-31", "31-01-1970", "31/01/1970", "19700131", "1970/01/31", " 1970-01-31 ", "1970-1-31"],
)
def test_birth_date_formats(text: str) -> None:
    assert normalise_birth_date(text) == "1970-01-31"


def test_single_digit_day_and_month() -> None:
    assert normalise_birth_date("1-2-1970") == "1970-02-01"
    assert normalise_birth_date("1/2/1970") == "1970-02-01"


@pytest.mark.parametrize(
    "text",
    [
        "31-02-1970",
        "1970-13-01",
        "19701301",
        "abc",
        "",
        "   ",
        "01-01-1700",
        "01-01-2200",
        "1970.01.31",
        "70-01-31",
        "\u0661\u0669\u0667\u0660-01-31",
        "1970-01-31T00:00",
        "197001311",
    ],
)
def test_birth_date_rejections(text: str) -> None:
    with pytest.raises(InvalidIdError):
        normalise_birth_date(text)


def test_error_names_row_and_column_not_value() -> None:
    with pytest.raises(InvalidIdError) as info:
        normalise_birth_date("31-02-1983", row=17, column="geboortedatum")
    message = str(info.value)
    assert "row 17" in message and "'geboortedatum'" in message
    assert "1983" not in message and "31-02" not in message
    assert info.value.row == 17 and info.value.column == "geboortedatum"
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1234 ab", "1234AB"),
        ("1234\u00a0AB", "1234AB"),
        (" 1234\tAb ", "1234AB"),
        ("sw1a 1aa", "SW1A1AA"),
        ("12345", "12345"),
        ("0123456789", "0123456789"),
    ],
)
def test_postal_code(text: str, expected: str) -> None:
    assert normalise_postal_code(text) == expected


@pytest.mark.parametrize("text", ["123", "", "  ", "12345678901", "1234-AB", "1234.AB", "12é4AB", "１２３４AB"])
def test_postal_code_rejections(text: str) -> None:
    with pytest.raises(InvalidIdError):
        normalise_postal_code(text)


def test_postal_error_does_not_echo_value() -> None:
    with pytest.raises(InvalidIdError) as info:
        normalise_postal_code("9876-ZQ", row=3, column="postcode")
    assert "9876" not in str(info.value) and "ZQ" not in str(info.value)
    assert "row 3" in str(info.value)


def test_canonical_id() -> None:
    assert canonical_id("31/01/1970", "1234 ab") == "1970-01-31|1234AB"


def test_canonical_id_reports_the_failing_column() -> None:
    with pytest.raises(InvalidIdError) as info:
        canonical_id("1970-01-31", "x", row=4, birth_date_column="dob", postal_code_column="pc")
    assert info.value.column == "pc"


@given(st.dates(min_value=dt.date(1850, 1, 1), max_value=dt.date(2100, 12, 31)))
def test_all_formats_agree(date: dt.date) -> None:
    y, m, d = date.year, date.month, date.day
    texts = [
        f"{y:04d}-{m:02d}-{d:02d}",
        f"{d:02d}-{m:02d}-{y:04d}",
        f"{d:02d}/{m:02d}/{y:04d}",
        f"{y:04d}{m:02d}{d:02d}",
        f"{y:04d}/{m:02d}/{d:02d}",
    ]
    assert {normalise_birth_date(t) for t in texts} == {date.isoformat()}


@given(st.text(alphabet="0123456789-/ .abXY", min_size=6, max_size=14))
def test_rejection_never_echoes_input(text: str) -> None:
    assume(len(text.strip()) >= 4)  # shorter strings occur in any message ("row 2")
    try:
        normalise_birth_date(text, row=2, column="dob")
    except InvalidIdError as err:
        assert text.strip() not in str(err)
