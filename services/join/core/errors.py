"""Domain errors of the secure inner join.

Rule: no message ever contains a patient value, an ID, a tag or a share. Errors
about input data name the row number and the column instead, so the local
operator can find the cell. Reasons are fixed strings chosen by the code, never
built from input values.

Row numbers are line numbers in the owner's CSV file (the header is row 1, the
first data row is row 2), as a spreadsheet shows them.
"""

from __future__ import annotations

from collections.abc import Sequence


class JoinError(Exception):
    """Base of every error raised by the join core."""


class DataError(JoinError, ValueError):
    """Invalid input data: the message names the row and column, never the value."""

    def __init__(self, reason: str, *, row: int | None = None, column: str | None = None) -> None:
        self.reason = reason
        self.row = row
        self.column = column
        super().__init__(_locate(reason, row, column))


def _locate(reason: str, row: int | None, column: str | None) -> str:
    where = []
    if row is not None:
        where.append(f"row {row}")
    if column is not None:
        where.append(f"column {column!r}")
    return f"{', '.join(where)}: {reason}" if where else reason


class SourceFileError(DataError):
    """The CSV file is missing, unreadable, not UTF-8 or has no data rows."""


class MissingFileError(SourceFileError):
    """The CSV file does not exist."""


class EmptyFileError(SourceFileError):
    """The CSV file has no header or no data rows."""


class MissingColumnError(DataError):
    """Columns named in the study are not in the CSV header (or are ambiguous)."""

    def __init__(self, columns: Sequence[str], reason: str = "not found in the CSV header") -> None:
        self.columns = tuple(columns)
        names = ", ".join(repr(c) for c in self.columns)
        super().__init__(f"column(s) {names} {reason}")


class MalformedRowError(DataError):
    """A row has a different number of fields than the header."""


class MissingValueError(DataError):
    """A required cell is empty (or an explicit NA marker)."""


class NonNumericError(DataError):
    """A numeric cell does not hold a number."""


class NonFiniteError(DataError):
    """A numeric cell holds NaN or infinity."""


class OutOfRangeError(DataError):
    """A value lies outside its column's declared [min, max] range."""


class InvalidIdError(DataError):
    """A birth date or postal code cannot be normalised."""


class DuplicateIdError(DataError):
    """Several rows of one owner have the same ID (birth date + postal code)."""

    _SHOWN = 10

    def __init__(self, groups: Sequence[Sequence[int]]) -> None:
        self.groups = tuple(tuple(g) for g in groups)
        shown = "; ".join("rows " + ", ".join(str(r) for r in g) for g in self.groups[: self._SHOWN])
        more = len(self.groups) - self._SHOWN
        suffix = f"; and {more} more group(s)" if more > 0 else ""
        super().__init__(f"duplicate IDs (same birth date and postal code) in {shown}{suffix}")


class SpecError(JoinError, ValueError):
    """The study's column specification or the protocol parameters are inconsistent."""


class WireFormatError(JoinError, ValueError):
    """A key, key id, ciphertext or share encoding is malformed or does not match."""


class PoolExhaustedError(JoinError, RuntimeError):
    """The randomness pool has no element left; elements are never reused."""


class DuplicateTagError(JoinError, ValueError):
    """An upload holds the same tag twice (owners deduplicate IDs, so this is a fault)."""


class IntersectionTooSmallError(JoinError):
    """The intersection is below the study's minimum; its size is deliberately not reported."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        super().__init__(f"intersection is smaller than the study's minimum of {minimum} patients")


class KeySizeError(JoinError, ValueError):
    """A Paillier key is not of the study's size, or is below the minimum (nothing was encrypted under it)."""


class DecryptionError(JoinError, ValueError):
    """A masked ciphertext does not decrypt to a valid packed row (wrong key or corrupted)."""
