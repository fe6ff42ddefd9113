"""Reading and validating one data owner's CSV file.

Input: a UTF-8 text file (with or without BOM), delimiter ``,`` ``;`` or tab
(detected from the header line), a header row, then one row per patient.
The study names the birth-date and postal-code columns, the feature columns
with declared ranges and, at one owner, the target column. Other columns are
ignored. Blank lines are skipped.

Numbers: plain decimal or scientific notation (``12``, ``-0.5``, ``1e3``).
With ``;`` as delimiter a decimal comma is accepted too (``23,5``), as
European spreadsheets write it. Empty cells and the markers NA, N/A, NULL,
None count as missing.

Output: canonical IDs (``ids.canonical_id``), a float64 matrix with the
features then the target, and each row's line number in the file.

Errors are ``DataError`` subclasses naming the row (line number; the header
is row 1) and the column, never the cell's value. Reading stops at the first
bad cell, except for duplicate IDs, which are reported all together.

``count_owner_rows`` counts the data rows with the same structural checks (encoding,
quoting, header, fields per row) and none of the values', for sizing work before a run.

Memory: the file is read as a stream, the values go into one flat array of
doubles and duplicates are found by sorting, so a table of a million rows
costs about its IDs and values (~160 MB), not the text, a list per row and a
dictionary of IDs (~1 GB).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO, TypeVar

import numpy as np

from services.join.core.columns import ColumnSpec, check_distinct
from services.join.core.errors import (
    DuplicateIdError,
    EmptyFileError,
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
from services.join.core.fixedpoint import FixedPointFormat, FloatMatrix
from services.join.core.ids import canonical_id

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NON_FINITE = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_MISSING = frozenset({"", "na", "n/a", "null", "none"})
_DELIMITERS = (",", ";", "\t")
T = TypeVar("T")
_NO_DATA_ROWS = "source CSV file has a header but no data rows"
DEFAULT_FIXED_POINT = FixedPointFormat()  # f = 32, ℓ = 64 (frozen: safe as a default argument)


@dataclass(frozen=True)
class OwnerTable:
    """An owner's validated rows: canonical IDs, values (features then target), file row numbers."""

    ids: list[str]
    values: FloatMatrix
    columns: tuple[ColumnSpec, ...]
    row_numbers: list[int]

    def __repr__(self) -> str:  # never print IDs or values
        names = tuple(c.name for c in self.columns)
        return f"OwnerTable(rows={len(self.ids)}, columns={names!r})"


def _detect_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def parse_number(cell: str, *, row: int, column: str, decimal_comma: bool = False) -> float:
    """A finite float from a cell; DataError subclasses (row, column, never the value) otherwise."""
    text = cell.strip()
    if text.lower() in _MISSING:
        raise MissingValueError("value is missing", row=row, column=column)
    if text.lower() in _NON_FINITE:
        raise NonFiniteError("value is NaN or infinite", row=row, column=column)
    if decimal_comma and text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    if _NUMBER.fullmatch(text) is None:
        raise NonNumericError("value is not a number", row=row, column=column)
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise NonFiniteError("value is too large (not finite)", row=row, column=column)
    return value


def _check_spec(
    birth_date_column: str, postal_code_column: str, columns: Sequence[ColumnSpec], fmt: FixedPointFormat
) -> None:
    if not columns:
        raise SpecError("an owner needs at least one feature or target column")
    check_distinct([birth_date_column, postal_code_column, *(c.name for c in columns)])
    fmt.check_columns(columns)


def _checked_columns(
    birth_date_column: str,
    postal_code_column: str,
    features: Sequence[ColumnSpec],
    target: ColumnSpec | None,
    fmt: FixedPointFormat,
) -> tuple[ColumnSpec, ...]:
    """The value columns, features then the target, once the spec's rules hold."""
    columns = (*features, *((target,) if target is not None else ()))
    _check_spec(birth_date_column, postal_code_column, columns, fmt)
    return columns


def read_owner_csv(
    path: str | os.PathLike[str],
    *,
    birth_date_column: str,
    postal_code_column: str,
    features: Sequence[ColumnSpec],
    target: ColumnSpec | None = None,
    fixed_point: FixedPointFormat = DEFAULT_FIXED_POINT,
) -> OwnerTable:
    """Read, normalise and validate an owner's CSV (see the module docstring for the rules)."""
    columns = _checked_columns(birth_date_column, postal_code_column, features, target, fixed_point)
    return _with_source(path, lambda f: _parse_stream(f, birth_date_column, postal_code_column, columns))


def count_owner_rows(
    path: str | os.PathLike[str],
    *,
    birth_date_column: str,
    postal_code_column: str,
    features: Sequence[ColumnSpec],
    target: ColumnSpec | None = None,
    fixed_point: FixedPointFormat = DEFAULT_FIXED_POINT,
) -> int:
    """How many data rows ``read_owner_csv`` reads from the file, streamed: the same checks of the
    file's structure (encoding, quoting, header, fields per row), none of its values (IDs, numbers,
    ranges, duplicates; ``read_owner_csv`` checks those before every run), and no table in memory."""
    columns = _checked_columns(birth_date_column, postal_code_column, features, target, fixed_point)
    wanted = [birth_date_column, postal_code_column, *(c.name for c in columns)]
    return _with_source(path, lambda f: _with_reader(f, lambda reader, _: _count_rows(reader, wanted)))


def _with_source(path: str | os.PathLike[str], read: Callable[[TextIO], T]) -> T:
    """``read`` on the opened file; the ways a path fails to be a readable UTF-8 file as SourceFileErrors."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return read(f)
    except FileNotFoundError:
        raise MissingFileError("source CSV file not found") from None
    except IsADirectoryError:
        raise SourceFileError("source CSV path is a directory") from None
    except PermissionError:
        raise SourceFileError("source CSV file is not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise SourceFileError("source CSV file is not valid UTF-8 text") from None


def parse_owner_csv(
    text: str,
    *,
    birth_date_column: str,
    postal_code_column: str,
    columns: Sequence[ColumnSpec],
    fixed_point: FixedPointFormat = DEFAULT_FIXED_POINT,
) -> OwnerTable:
    """The parsing and validation behind ``read_owner_csv``, on the file's text."""
    _check_spec(birth_date_column, postal_code_column, columns, fixed_point)
    return _parse_stream(
        io.StringIO(text.removeprefix("\ufeff"), newline=""), birth_date_column, postal_code_column, columns
    )


def _first_text_line(lines: Iterable[str]) -> str | None:
    """The first line with something but whitespace on it, as ``str.lstrip().splitlines()[0]`` sees it."""
    for line in lines:
        stripped = line.lstrip()
        if stripped:
            return stripped.splitlines()[0]
    return None


def _parse_stream(
    stream: TextIO, birth_date_column: str, postal_code_column: str, columns: Sequence[ColumnSpec]
) -> OwnerTable:
    """Parse from the start of a seekable text stream (newline="" as the csv module wants)."""
    return _with_reader(
        stream, lambda reader, delimiter: _read_rows(reader, delimiter, birth_date_column, postal_code_column, columns)
    )


def _with_reader(stream: TextIO, read: Callable[[_Reader, str], T]) -> T:
    """``read(reader, delimiter)`` with a strict ``csv.reader`` from the start of a seekable text stream
    (newline="" as the csv module wants), the delimiter detected from the first line."""
    first = _first_text_line(stream)
    if first is None:
        raise EmptyFileError("source CSV file is empty")
    stream.seek(0)
    delimiter = _detect_delimiter(first)
    reader = csv.reader(stream, delimiter=delimiter, strict=True)
    try:
        return read(reader, delimiter)
    except csv.Error:
        raise MalformedRowError("the CSV quoting is malformed", row=reader.line_num) from None


class _Reader(Protocol):
    """What ``_read_rows`` needs of a ``csv.reader``."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...


def _read_header(reader: _Reader, wanted: Sequence[str]) -> list[str]:
    """The first non-blank line's fields, which must name each `wanted` column exactly once."""
    header: list[str] | None = None
    for fields in reader:
        if any(f.strip() for f in fields):
            header = [f.strip() for f in fields]
            break
    if header is None:
        raise EmptyFileError("source CSV file has no header")
    missing = [name for name in wanted if name not in header]
    if missing:
        raise MissingColumnError(missing)
    ambiguous = [name for name in wanted if header.count(name) > 1]
    if ambiguous:
        raise MissingColumnError(ambiguous, "appear more than once in the CSV header")
    return header


def _read_rows(
    reader: _Reader,
    delimiter: str,
    birth_date_column: str,
    postal_code_column: str,
    columns: Sequence[ColumnSpec],
) -> OwnerTable:
    header = _read_header(reader, [birth_date_column, postal_code_column, *(c.name for c in columns)])
    date_at, postal_at = header.index(birth_date_column), header.index(postal_code_column)
    value_at = [header.index(c.name) for c in columns]
    decimal_comma = delimiter == ";"

    ids: list[str] = []
    values = array("d")  # row-major, len(columns) per row
    row_numbers: list[int] = []
    for line, fields in _data_rows(reader, len(header)):
        for at, name in ((date_at, birth_date_column), (postal_at, postal_code_column)):
            if fields[at].strip().lower() in _MISSING:
                raise MissingValueError("ID value is missing", row=line, column=name)
        ids.append(
            canonical_id(
                fields[date_at],
                fields[postal_at],
                row=line,
                birth_date_column=birth_date_column,
                postal_code_column=postal_code_column,
            )
        )
        for at, spec in zip(value_at, columns, strict=True):
            value = parse_number(fields[at], row=line, column=spec.name, decimal_comma=decimal_comma)
            if not spec.min <= value <= spec.max:
                raise OutOfRangeError("value outside the declared range", row=line, column=spec.name)
            values.append(value)
        row_numbers.append(line)
    if not ids:
        raise EmptyFileError(_NO_DATA_ROWS)
    _check_duplicates(ids, row_numbers)
    matrix = np.frombuffer(values, dtype=np.float64).reshape(len(ids), len(columns))  # no copy
    return OwnerTable(ids, matrix, tuple(columns), row_numbers)


def _data_rows(reader: _Reader, width: int) -> Iterator[tuple[int, list[str]]]:
    """The records after the header but blank ones, each with its line number; every one must have
    the header's ``width`` fields."""
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) != width:
            raise MalformedRowError(f"row has {len(fields)} fields, the header has {width}", row=reader.line_num)
        yield reader.line_num, fields


def _count_rows(reader: _Reader, wanted: Sequence[str]) -> int:
    header = _read_header(reader, wanted)
    rows = sum(1 for _ in _data_rows(reader, len(header)))
    if not rows:
        raise EmptyFileError(_NO_DATA_ROWS)
    return rows


def _check_duplicates(ids: Sequence[str], row_numbers: Sequence[int]) -> None:
    """Every group of rows with one ID, by sorting (rows of a group stay in file order)."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    groups = []
    for _, run in itertools.groupby(order, key=ids.__getitem__):
        members = list(run)
        if len(members) > 1:
            groups.append([row_numbers[i] for i in members])
    if groups:
        raise DuplicateIdError(sorted(groups))
