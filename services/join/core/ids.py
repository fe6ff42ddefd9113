"""ID normalisation: birth date + postal code → one canonical string.

Both owners must turn the same patient into byte-identical strings, or the
keyed hashes (``keys.tag``) will not match. The canonical form is

    "<ISO birth date>|<postal code>"      e.g. "1970-01-31|1234AB"

- Birth date: accepted as ``1970-01-31`` (ISO), ``31-01-1970``, ``31/01/1970``,
  ``19700131`` or ``1970/01/31`` (day and month may have one digit in the
  separated forms); it must be a real calendar date with a plausible year
  (1850–2100). Output: ISO ``YYYY-MM-DD``.
- Postal code: upper-cased, all whitespace removed; then 4–10 ASCII letters or
  digits. Other characters (hyphens, dots) are rejected rather than silently
  dropped, so that both owners see the same rule fail instead of producing
  different canonical strings.

Security note: an ID has little entropy (≈ 36,500 birth dates × a few thousand
postal codes), so its keyed hash is only as secret as the key. Errors never
echo the value: they name the row and column.
"""

from __future__ import annotations

import datetime as _dt
import re

from services.join.core.errors import InvalidIdError

_MIN_YEAR = 1850
_MAX_YEAR = 2100

# (pattern, group order) — order names which regex group is year, month, day.
_DATE_FORMATS: tuple[tuple[re.Pattern[str], tuple[int, int, int]], ...] = (
    (re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})", re.ASCII), (1, 2, 3)),
    (re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})", re.ASCII), (1, 2, 3)),
    (re.compile(r"(\d{1,2})-(\d{1,2})-(\d{4})", re.ASCII), (3, 2, 1)),
    (re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})", re.ASCII), (3, 2, 1)),
    (re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII), (1, 2, 3)),
)
_DATE_HELP = "expected YYYY-MM-DD, DD-MM-YYYY, DD/MM/YYYY, YYYYMMDD or YYYY/MM/DD"

_POSTAL = re.compile(r"[A-Z0-9]{4,10}", re.ASCII)
_WHITESPACE = re.compile(r"\s+")  # Unicode whitespace too (no-break spaces from spreadsheets)

SEPARATOR = "|"


def normalise_birth_date(text: str, *, row: int | None = None, column: str | None = None) -> str:
    """Return the ISO form of a birth date; raise InvalidIdError (row, column, no value)."""
    stripped = text.strip()
    for pattern, (yi, mi, di) in _DATE_FORMATS:
        match = pattern.fullmatch(stripped)
        if match is None:
            continue
        year, month, day = int(match[yi]), int(match[mi]), int(match[di])
        try:
            date = _dt.date(year, month, day)
        except ValueError:
            raise InvalidIdError("birth date is not a calendar date", row=row, column=column) from None
        if not _MIN_YEAR <= date.year <= _MAX_YEAR:
            raise InvalidIdError(f"birth date year outside {_MIN_YEAR}–{_MAX_YEAR}", row=row, column=column)
        return date.isoformat()
    reason = "birth date is missing" if not stripped else f"birth date not recognised ({_DATE_HELP})"
    raise InvalidIdError(reason, row=row, column=column)


def normalise_postal_code(text: str, *, row: int | None = None, column: str | None = None) -> str:
    """Return the postal code upper-cased without whitespace; raise InvalidIdError if implausible."""
    code = _WHITESPACE.sub("", text).upper()
    if not code:
        raise InvalidIdError("postal code is missing", row=row, column=column)
    if _POSTAL.fullmatch(code) is None:
        raise InvalidIdError("postal code must be 4–10 letters or digits (spaces are ignored)", row=row, column=column)
    return code


def canonical_id(
    birth_date: str,
    postal_code: str,
    *,
    row: int | None = None,
    birth_date_column: str | None = None,
    postal_code_column: str | None = None,
) -> str:
    """Return ``"<ISO birth date>|<POSTALCODE>"`` from raw cells."""
    date = normalise_birth_date(birth_date, row=row, column=birth_date_column)
    code = normalise_postal_code(postal_code, row=row, column=postal_code_column)
    return f"{date}{SEPARATOR}{code}"
