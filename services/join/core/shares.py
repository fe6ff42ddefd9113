"""Owners' resharing: masked ciphertexts → additive shares; the share matrix wire format.

Maths. An owner decrypts each masked ciphertext of the other owner's rows
and unpacks one integer per column: x' + r ∈ [0, 2^(ℓ+σ+1)). The helper holds
−r ∈ (−2^(ℓ+σ), 0]. Over the integers

    (x' + r) + (−r) = x' = round(x·2^f) + 2^(ℓ−1)

so the joined table is an additive sharing among the three parties; the
public offset 2^(ℓ−1) and the scale 2^f are removed later inside MPC (after
the lasso parties sum their shares modulo MPyC's prime, which is larger than
any share, so the integer identity carries over).

Full matrices. Over all study columns (A's, then B's, in the study's order),
each party's matrix holds:
    A: 0 for A's columns, x'_B + r_B for B's columns
    B: x'_A + r_A for A's columns, 0 for B's columns
    H: −r_A for A's columns, −r_B for B's columns
``assemble`` builds such a matrix from the blocks a party holds.

Wire format (``SharesChunk.values``): row-major, each value little-endian
two's complement in ``value_bytes`` = ⌈(ℓ + σ + 2)/8⌉ bytes (14 for ℓ = 64,
σ = 40), enough for both x' + r < 2^(ℓ+σ+1) and −r > −2^(ℓ+σ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.join.core.errors import SpecError, WireFormatError
from services.join.core.packing import SlotLayout, unpack_row
from services.join.core.paillier import PrivateKey, decrypt_many


@dataclass(frozen=True)
class ShareMatrix:
    """One party's additive shares: ``values[row][k]`` belongs to ``columns[k]``."""

    columns: tuple[str, ...]
    values: list[list[int]]

    def __post_init__(self) -> None:
        if any(len(row) != len(self.columns) for row in self.values):
            raise SpecError("a share row does not match the columns")

    @property
    def n_rows(self) -> int:
        """Number of rows (the joined count)."""
        return len(self.values)

    def __repr__(self) -> str:  # never print shares
        return f"ShareMatrix(columns={self.columns!r}, rows={self.n_rows})"


def value_bytes(layout: SlotLayout) -> int:
    """Bytes per share on the wire: ⌈(ℓ + σ + 2)/8⌉."""
    return -(-(layout.value_bits + layout.sigma_bits + 2) // 8)


def owner_shares(
    key: PrivateKey,
    layout: SlotLayout,
    ciphertexts: Sequence[Sequence[int]],
    columns: Sequence[str],
    *,
    threads: int = 1,
) -> ShareMatrix:
    """Decrypt masked rows (p-only when the layout allows) and unpack x' + r per column."""
    layout.check_columns(len(columns))
    flat = flatten_masked(layout, ciphertexts)
    plain = decrypt_many(key, flat, below_p=decrypts_below_p(key, layout), threads=threads)
    return shares_from_plaintexts(layout, plain, columns)


def flatten_masked(layout: SlotLayout, ciphertexts: Sequence[Sequence[int]]) -> list[int]:
    """The rows' ciphertexts in one list, each row checked to hold ``ciphertexts_per_row``."""
    flat: list[int] = []
    for row in ciphertexts:
        if len(row) != layout.ciphertexts_per_row:
            raise WireFormatError("a row has the wrong number of ciphertexts for its layout")
        flat.extend(row)
    return flat


def decrypts_below_p(key: PrivateKey, layout: SlotLayout) -> bool:
    """Every plaintext of ``layout`` is below p: the p-only decryption applies."""
    return layout.plaintext_bits <= key.fast_plaintext_bits


def shares_from_plaintexts(layout: SlotLayout, plain: Sequence[int], columns: Sequence[str]) -> ShareMatrix:
    """Unpack decrypted rows (``ciphertexts_per_row`` plaintexts each, in order) into x' + r per column."""
    layout.check_columns(len(columns))
    per_row = layout.ciphertexts_per_row
    if len(plain) % per_row:
        raise WireFormatError("the plaintexts are not a whole number of rows")
    values = [unpack_row(layout, plain[k : k + per_row], len(columns)) for k in range(0, len(plain), per_row)]
    return ShareMatrix(tuple(columns), values)


def assemble(columns: Sequence[str], blocks: Sequence[ShareMatrix], n_rows: int) -> ShareMatrix:
    """One party's matrix over ``columns``: its blocks' values, 0 where it holds nothing."""
    position = {name: k for k, name in enumerate(columns)}
    if len(position) != len(columns):
        raise SpecError("a column is named twice")
    values = [[0] * len(columns) for _ in range(n_rows)]
    filled: set[str] = set()
    for block in blocks:
        if block.n_rows != n_rows:
            raise SpecError("a share block has a different number of rows")
        for k, name in enumerate(block.columns):
            if name not in position or name in filled:
                raise SpecError(f"column {name!r} is unknown or held twice")
            filled.add(name)
            target = position[name]
            for row, src in zip(values, block.values, strict=True):
                row[target] = src[k]
    return ShareMatrix(tuple(columns), values)


def reconstruct(matrices: Sequence[ShareMatrix]) -> ShareMatrix:
    """Element-wise integer sum of the parties' matrices (for tests and oracles; MPC does this securely)."""
    if not matrices:
        raise SpecError("nothing to reconstruct")
    first = matrices[0]
    if any(m.columns != first.columns or m.n_rows != first.n_rows for m in matrices):
        raise SpecError("share matrices differ in columns or rows")
    values = [
        [sum(cells) for cells in zip(*rows, strict=True)] for rows in zip(*(m.values for m in matrices), strict=True)
    ]
    return ShareMatrix(first.columns, values)


def encode_shares(values: Sequence[Sequence[int]], width: int) -> bytes:
    """Row-major little-endian two's complement, ``width`` bytes per value."""
    try:
        return b"".join(v.to_bytes(width, "little", signed=True) for row in values for v in row)
    except OverflowError:
        raise SpecError("a share does not fit the value width") from None


def check_share_bytes(data: bytes, n_columns: int, width: int) -> int:
    """The number of rows in ``encode_shares`` bytes; WireFormatError unless whole rows."""
    row_bytes = n_columns * width
    if n_columns < 1 or width < 1 or len(data) % row_bytes:
        raise WireFormatError("share bytes are not a whole number of rows")
    return len(data) // row_bytes


def decode_shares(data: bytes, n_columns: int, width: int) -> list[list[int]]:
    """Inverse of ``encode_shares``; the length must be a whole number of rows."""
    check_share_bytes(data, n_columns, width)
    row_bytes = n_columns * width
    view = memoryview(data)
    return [
        [int.from_bytes(view[r + k : r + k + width], "little", signed=True) for k in range(0, row_bytes, width)]
        for r in range(0, len(data), row_bytes)
    ]
