"""Fixed-point encoding of attribute values as non-negative ℓ-bit integers.

Maths. With f fractional bits and ℓ value bits (defaults f = 32, ℓ = 64, as
MPyC's ``SecFxp(64, 32)``):

    x' = round(x · 2^f) + 2^(ℓ−1)   ∈ [0, 2^ℓ)
    x  = (x' − 2^(ℓ−1)) / 2^f

so a value must satisfy −2^(ℓ−1) ≤ round(x·2^f) < 2^(ℓ−1), i.e. roughly
|x| < 2^(ℓ−1−f) = 2^31. The offset 2^(ℓ−1) makes every encoding non-negative
so it fits an unsigned slot of a Paillier plaintext; it is public and removed
inside MPC (together with the scale 2^f). Rounding is half-to-even, as
Python's ``round`` (and MPyC's own float conversion).

Representation. 2^64 does not fit int64, so encodings are ``numpy.uint64``:
round(x·2^f) is exact in float64 (a power-of-two scale, then ``rint``), is
cast to int64, reinterpreted as uint64 and the offset added modulo 2^64 —
which equals the true sum because the result lies in [0, 2^ℓ) ⊆ [0, 2^64).
Hence ℓ ≤ 64. Decoding reverses the steps exactly: decode(encode(x)) equals
round(x·2^f)/2^f bit for bit.

Range checks use the study's declared, public [min, max] per column; errors
name the row and column, never the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.join.core.columns import ColumnSpec
from services.join.core.errors import NonFiniteError, OutOfRangeError, SpecError

FloatMatrix = npt.NDArray[np.float64]
EncodedMatrix = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class FixedPointFormat:
    """Fractional bits f and value bits ℓ (1 < ℓ ≤ 64, 0 ≤ f < ℓ − 1)."""

    fractional_bits: int = 32
    value_bits: int = 64

    def __post_init__(self) -> None:
        if not 2 <= self.value_bits <= 64:
            raise SpecError("value bits must be in 2..64")
        if not 0 <= self.fractional_bits < self.value_bits - 1:
            raise SpecError("fractional bits must be in 0..value_bits-2")

    @property
    def offset(self) -> int:
        """The public offset 2^(ℓ−1)."""
        return 1 << (self.value_bits - 1)

    @property
    def scale(self) -> float:
        """2^f."""
        return float(1 << self.fractional_bits)

    def representable(self, x: float) -> bool:
        """True if round(x·2^f) lies in [−2^(ℓ−1), 2^(ℓ−1))."""
        v = np.rint(np.float64(x) * self.scale)
        return bool(np.isfinite(v)) and -self.offset <= int(v) < self.offset

    def check_columns(self, columns: Sequence[ColumnSpec]) -> None:
        """Raise SpecError if a declared range is not representable in this format."""
        for col in columns:
            if not (self.representable(col.min) and self.representable(col.max)):
                raise SpecError(
                    f"column {col.name!r}: declared range exceeds the fixed-point range "
                    f"|x| < 2^{self.value_bits - 1 - self.fractional_bits}"
                )


def _row_number(row_numbers: Sequence[int] | None, index: int) -> int:
    return row_numbers[index] if row_numbers is not None else index + 1


def check_range(values: FloatMatrix, columns: Sequence[ColumnSpec], row_numbers: Sequence[int] | None = None) -> None:
    """Raise NonFiniteError / OutOfRangeError for the first bad cell (row-major).

    ``row_numbers[i]`` is the reported number of row i (default i + 1).
    """
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise SpecError("value matrix does not match the column specification")
    mins = np.array([c.min for c in columns], dtype=np.float64)
    maxs = np.array([c.max for c in columns], dtype=np.float64)
    ok = (values >= mins) & (values <= maxs)  # NaN compares False: caught too
    if ok.all():
        return
    i, j = (int(k) for k in np.argwhere(~ok)[0])
    row, column = _row_number(row_numbers, i), columns[j].name
    if not np.isfinite(values[i, j]):
        raise NonFiniteError("value is NaN or infinite", row=row, column=column)
    raise OutOfRangeError("value outside the declared range", row=row, column=column)


def encode(
    values: FloatMatrix,
    columns: Sequence[ColumnSpec],
    fmt: FixedPointFormat = FixedPointFormat(),
    row_numbers: Sequence[int] | None = None,
) -> EncodedMatrix:
    """Range-check, then x' = round(x·2^f) + 2^(ℓ−1) element-wise, as uint64."""
    fmt.check_columns(columns)
    values = np.asarray(values, dtype=np.float64)
    check_range(values, columns, row_numbers)
    scaled = np.rint(values * fmt.scale).astype(np.int64)
    # Two's complement view + offset mod 2^64 = the exact non-negative encoding.
    return scaled.view(np.uint64) + np.uint64(fmt.offset)


def decode(encoded: npt.ArrayLike, fmt: FixedPointFormat = FixedPointFormat()) -> FloatMatrix:
    """(x' − 2^(ℓ−1)) / 2^f element-wise; accepts uint64 arrays or Python ints in [0, 2^ℓ)."""
    arr = np.asarray(encoded, dtype=np.uint64)
    # x' − 2^(ℓ−1) ∈ [−2^(ℓ−1), 2^(ℓ−1)) wraps mod 2^64 to its int64 two's complement.
    centred = (arr - np.uint64(fmt.offset)).view(np.int64)
    return centred.astype(np.float64) / fmt.scale


def encode_value(x: float, fmt: FixedPointFormat = FixedPointFormat()) -> int:
    """Encoding of one value as a Python int (no declared range; representability only)."""
    if not fmt.representable(x):
        raise OutOfRangeError("value outside the fixed-point range")
    return int(np.rint(np.float64(x) * fmt.scale)) + fmt.offset


def decode_value(encoded: int, fmt: FixedPointFormat = FixedPointFormat()) -> float:
    """Inverse of ``encode_value``."""
    return (encoded - fmt.offset) / fmt.scale
