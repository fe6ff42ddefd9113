"""Reading an owner's CSV: formats, and one clear error per fault that never shows the value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.join.core.columns import ColumnSpec
from services.join.core.csvinput import OwnerTable, count_owner_rows, read_owner_csv
from services.join.core.errors import (
    DataError,
    DuplicateIdError,
    EmptyFileError,
    InvalidIdError,
    MalformedRowError,
    MissingColumnError,
    MissingFileError,
    MissingValueError,
    NonFiniteError,
    NonNumericError,
    OutOfRangeError,
    SourceFileError,
    SpecError,
)

FEATURES = [ColumnSpec("days", 0, 365), ColumnSpec("bmi", 10, 60)]
TARGET = ColumnSpec("cost", -1000, 1e6)
HEADER = "dob,postcode,days,bmi,cost,notes"


def _read(tmp_path: Path, text: str, *, encoding: str = "utf-8", target: bool = True) -> OwnerTable:
    path = tmp_path / "owner.csv"
    path.write_bytes(text.encode(encoding))
    return read_owner_csv(
        path,
        birth_date_column="dob",
        postal_code_column="postcode",
        features=FEATURES,
        target=TARGET if target else None,
    )


def test_reads_and_normalises(tmp_path: Path) -> None:
    text = f"{HEADER}\n1970-01-31,1234 ab,3,22.5,100,x\n\n31/12/1980,5678CD,0,30,-5.5e2,\n"
    table = _read(tmp_path, text)
    assert table.ids == ["1970-01-31|1234AB", "1980-12-31|5678CD"]
    assert table.values.tolist() == [[3.0, 22.5, 100.0], [0.0, 30.0, -550.0]]
    assert [c.name for c in table.columns] == ["days", "bmi", "cost"]
    assert table.row_numbers == [2, 4]  # blank line 3 skipped, numbers stay file lines
    assert "1234AB" not in repr(table) and "22.5" not in repr(table)


def test_semicolon_decimal_comma_bom_crlf(tmp_path: Path) -> None:
    text = "\ufeffdob;postcode;days;bmi;cost\r\n19700131;1234AB;3;22,5;1e3\r\n"
    table = _read(tmp_path, text)
    assert table.values.tolist() == [[3.0, 22.5, 1000.0]]
    assert table.ids == ["1970-01-31|1234AB"]


def test_tab_delimited_and_quoted(tmp_path: Path) -> None:
    text = 'dob\tpostcode\tdays\tbmi\tcost\n"1970-01-31"\t"1234 AB"\t3\t22\t1\n'
    assert _read(tmp_path, text).ids == ["1970-01-31|1234AB"]


def test_without_target(tmp_path: Path) -> None:
    table = _read(tmp_path, f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n", target=False)
    assert table.values.shape == (1, 2)


def _error(tmp_path: Path, text: str, kind: type[DataError], *, secret: str | None = None, **kw: object) -> DataError:
    with pytest.raises(kind) as info:
        _read(tmp_path, text, **kw)  # type: ignore[arg-type]
    if secret is not None:
        assert secret not in str(info.value)
    return info.value


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        read_owner_csv(tmp_path / "nope.csv", birth_date_column="dob", postal_code_column="postcode", features=FEATURES)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceFileError):
        read_owner_csv(tmp_path, birth_date_column="dob", postal_code_column="postcode", features=FEATURES)


@pytest.mark.parametrize("text", ["", "  \n\n", f"{HEADER}\n", f"{HEADER}\n\n  \n"])
def test_empty(tmp_path: Path, text: str) -> None:
    _error(tmp_path, text, EmptyFileError)


def test_not_utf8(tmp_path: Path) -> None:
    err = _error(tmp_path, f"{HEADER}\n1970-01-31,1234AB,3,22,1,Gr\u00fcn\n", SourceFileError, encoding="latin-1")
    assert "UTF-8" in str(err)


def test_missing_columns(tmp_path: Path) -> None:
    err = _error(tmp_path, "dob,postcode,days\n1970-01-31,1234AB,3\n", MissingColumnError)
    assert err.columns == ("bmi", "cost")  # type: ignore[attr-defined]
    assert "'bmi'" in str(err) and "'cost'" in str(err)


def test_ambiguous_column(tmp_path: Path) -> None:
    _error(tmp_path, "dob,postcode,days,bmi,cost,bmi\n1970-01-31,1234AB,3,22,1,23\n", MissingColumnError)


def test_wrong_field_count(tmp_path: Path) -> None:
    err = _error(tmp_path, f"{HEADER}\n1970-01-31,1234AB,3,22,1,,extra-87413\n", MalformedRowError, secret="87413")
    assert err.row == 2


def test_bad_quoting(tmp_path: Path) -> None:
    _error(tmp_path, f'{HEADER}\n1970-01-31,"1234AB"x,3,22,1,\n', MalformedRowError)


@pytest.mark.parametrize(
    ("cell", "kind"),
    [
        ("abc87413", NonNumericError),
        ("1_000", NonNumericError),
        ("0x1F", NonNumericError),
        ("\u0661\u0662", NonNumericError),  # non-ASCII digits
        ("22,5", NonNumericError),  # decimal comma only with ';'
        ("NaN", NonFiniteError),
        ("-inf", NonFiniteError),
        ("1e999", NonFiniteError),
        ("", MissingValueError),
        (" NA ", MissingValueError),
        ("87413", OutOfRangeError),
        ("-0.87413", OutOfRangeError),
    ],
)
def test_bad_cells(tmp_path: Path, cell: str, kind: type[DataError]) -> None:
    cell_csv = f'"{cell}"' if "," in cell else cell
    text = f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n1970-02-01,1234AB,{cell_csv},22,1,\n"
    err = _error(tmp_path, text, kind)
    assert (err.row, err.column) == (3, "days")
    if "87413" in cell or "_" in cell or "x" in cell:
        assert cell.strip() not in str(err)
    assert "row 3" in str(err) and "'days'" in str(err)


@pytest.mark.parametrize(
    ("dob", "postcode", "column"),
    [("1983-02-31", "1234AB", "dob"), ("31.01.1983", "1234AB", "dob"), ("1983-01-31", "98-ZQ", "postcode")],
)
def test_invalid_ids(tmp_path: Path, dob: str, postcode: str, column: str) -> None:
    err = _error(tmp_path, f"{HEADER}\n{dob},{postcode},3,22,1,\n", InvalidIdError)
    assert (err.row, err.column) == (2, column)
    for secret in ("1983", "98-ZQ", "31.01"):
        assert secret not in str(err)


def test_missing_id(tmp_path: Path) -> None:
    err = _error(tmp_path, f"{HEADER}\n1970-01-31,,3,22,1,\n", MissingValueError)
    assert err.column == "postcode"


def test_duplicate_ids_report_all_rows(tmp_path: Path) -> None:
    text = (
        f"{HEADER}\n1970-01-31,1234AB,1,22,1,\n1971-05-05,9999ZZ,1,22,1,\n"
        "31-01-1970,1234 ab,2,23,1,\n05/05/1971,9999zz,1,22,1,\n1970-01-31,1234AB,1,22,1,\n"
    )
    err = _error(tmp_path, text, DuplicateIdError, secret="1234")
    assert err.groups == ((2, 4, 6), (3, 5))  # type: ignore[attr-defined]
    assert "rows 2, 4, 6" in str(err) and "rows 3, 5" in str(err)
    assert "1970" not in str(err) and "9999" not in str(err)


def test_spec_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text(f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n")
    with pytest.raises(SpecError):
        read_owner_csv(
            path, birth_date_column="dob", postal_code_column="postcode", features=[FEATURES[0], FEATURES[0]]
        )
    with pytest.raises(SpecError):
        read_owner_csv(path, birth_date_column="dob", postal_code_column="dob", features=FEATURES)
    with pytest.raises(SpecError):
        read_owner_csv(
            path, birth_date_column="dob", postal_code_column="postcode", features=[ColumnSpec("days", 0, 2.0**40)]
        )
    with pytest.raises(SpecError):
        read_owner_csv(path, birth_date_column="dob", postal_code_column="postcode", features=[])
    with pytest.raises(SpecError):
        ColumnSpec("x", 2, 1)
    with pytest.raises(SpecError):
        ColumnSpec("x", 0, float("nan"))


def test_values_are_float64(tmp_path: Path) -> None:
    table = _read(tmp_path, f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n")
    assert table.values.dtype == np.float64


def _count(tmp_path: Path, text: str) -> int:
    path = tmp_path / "owner.csv"
    path.write_bytes(text.encode())
    return count_owner_rows(
        path, birth_date_column="dob", postal_code_column="postcode", features=FEATURES, target=TARGET
    )


@pytest.mark.parametrize(
    "text",
    [
        f"{HEADER}\n1970-01-31,1234 ab,3,22.5,100,x\n\n31/12/1980,5678CD,0,30,-5.5e2,\n",
        f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n\n\n   \n,,,,,\n",  # trailing blank lines and an empty record
        f"{HEADER}\n1970-01-31,1234AB,3,22,1,\n1970-02-01,1234AB,3,22,1,no newline at the end",
        f'{HEADER}\n1970-01-31,1234AB,3,22,1,"a note\n\non three lines"\n1970-02-01,1234AB,3,22,1,"a, b"\n',
        "\ufeffdob;postcode;days;bmi;cost\r\n19700131;1234AB;3;22,5;1e3\r\n\r\n19700201;1234AB;3;22,5;1e3\r\n",
        f"\n\n{HEADER}\r\n1970-01-31,1234AB,3,22,1,\r\n",  # blank lines before the header
    ],
)
def test_row_count_is_the_number_of_rows_read(tmp_path: Path, text: str) -> None:
    assert _count(tmp_path, text) == len(_read(tmp_path, text).ids)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", EmptyFileError),
        (f"{HEADER}\n\n", EmptyFileError),
        ("dob,days,bmi,cost\n1970-01-31,3,22,1\n", MissingColumnError),
        (f"{HEADER}\n1970-01-31,1234AB,3,22,1\n", MalformedRowError),
        (f'{HEADER}\n1970-01-31,1234AB,3,22,1,"unterminated\n', MalformedRowError),
    ],
)
def test_row_count_refuses_what_the_reader_refuses_of_the_files_structure(
    tmp_path: Path, text: str, kind: type[DataError]
) -> None:
    with pytest.raises(kind):
        _read(tmp_path, text)
    with pytest.raises(kind):
        _count(tmp_path, text)


def test_row_count_reads_no_values(tmp_path: Path) -> None:
    """Values are the reader's to check (before every run): a bad one does not stop the count."""
    text = f"{HEADER}\n1970-01-31,1234AB,999,22,1,\n1970-01-31,1234AB,x,22,1,\n,1234AB,3,22,1,\n"
    assert _count(tmp_path, text) == 3


def test_row_count_of_a_missing_file_or_one_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        count_owner_rows(
            tmp_path / "nope.csv", birth_date_column="dob", postal_code_column="postcode", features=FEATURES
        )
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{HEADER}\n1970-01-31,1234AB,3,22,1,café\n".encode("latin-1"))
    with pytest.raises(SourceFileError):
        count_owner_rows(path, birth_date_column="dob", postal_code_column="postcode", features=FEATURES)
