"""Slot layout: packing a row's encoded values into few Paillier plaintexts.

Maths. A slot holds one value in ``slot_bits = ℓ + σ + 1`` bits. The helper
adds a mask r ∈ [0, 2^(ℓ+σ)) to a value x' ∈ [0, 2^ℓ), and
x' + r < 2^ℓ + 2^(ℓ+σ) ≤ 2^(ℓ+σ+1), so a masked slot never carries into the
next one. Slot i of a plaintext occupies bits [i·slot_bits, (i+1)·slot_bits):

    m = Σ_i v_i · 2^(i·slot_bits)

Why below p. Every plaintext — masked or not — stays below
2^(s·slot_bits) with s·slot_bits < bits(p) − 1, where bits(p) = modulus_bits/2
is the size of the smaller prime of the decrypting owner's key (``paillier``
generates both primes with exactly that many bits). Hence m < p, and the owner
decrypts with the fast p-only formula (half the work of CRT). At 2048 bits:
(1024 − 2) // 105 = 9 slots, so a row of up to 9 values is one ciphertext;
at 1024 bits, 4 slots.

σ = 40 makes x' + r statistically 2^−40-close to a uniform value, whatever x'.
A row with more values than one plaintext holds is split over
``ciphertexts_per_row`` plaintexts, balanced (e.g. 5 values at 4 slots → 3 + 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.join.core.errors import DecryptionError, SpecError
from services.join.core.fixedpoint import FixedPointFormat

DEFAULT_SIGMA_BITS = 40


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def slot_capacity(modulus_bits: int, slot_bits: int) -> int:
    """Largest s with s·slot_bits < bits(p) − 1, bits(p) = modulus_bits // 2."""
    return max(0, (modulus_bits // 2 - 2) // slot_bits)


@dataclass(frozen=True)
class SlotLayout:
    """How values are encoded and packed; mirrors ``riskmesh.v1.SlotLayout``."""

    fractional_bits: int
    value_bits: int
    sigma_bits: int
    slot_bits: int
    slots_per_ciphertext: int
    ciphertexts_per_row: int

    def __post_init__(self) -> None:
        FixedPointFormat(self.fractional_bits, self.value_bits)  # validates f and ℓ
        if self.sigma_bits < 1:
            raise SpecError("sigma bits must be positive")
        if self.slot_bits != self.value_bits + self.sigma_bits + 1:
            raise SpecError("slot bits must equal value bits + sigma bits + 1")
        if self.slots_per_ciphertext < 1 or self.ciphertexts_per_row < 1:
            raise SpecError("slots per ciphertext and ciphertexts per row must be positive")

    @classmethod
    def for_columns(
        cls,
        n_columns: int,
        modulus_bits: int,
        *,
        fractional_bits: int = 32,
        value_bits: int = 64,
        sigma_bits: int = DEFAULT_SIGMA_BITS,
    ) -> SlotLayout:
        """The layout for ``n_columns`` values under a key of ``modulus_bits`` bits."""
        if n_columns < 1:
            raise SpecError("a row needs at least one column")
        slot_bits = value_bits + sigma_bits + 1
        capacity = slot_capacity(modulus_bits, slot_bits)
        if capacity < 1:
            raise SpecError("the Paillier modulus is too small for one slot")
        ciphertexts = _ceil_div(n_columns, capacity)
        slots = _ceil_div(n_columns, ciphertexts)  # balance the ciphertexts
        return cls(fractional_bits, value_bits, sigma_bits, slot_bits, slots, ciphertexts)

    @property
    def fixed_point(self) -> FixedPointFormat:
        """The fixed-point format (f, ℓ) of the values."""
        return FixedPointFormat(self.fractional_bits, self.value_bits)

    @property
    def mask_bits(self) -> int:
        """Masks are drawn from [0, 2^(ℓ+σ))."""
        return self.value_bits + self.sigma_bits

    @property
    def plaintext_bits(self) -> int:
        """Every packed plaintext is below 2^plaintext_bits."""
        return self.slots_per_ciphertext * self.slot_bits

    def check_columns(self, n_columns: int) -> None:
        """Raise SpecError unless ``n_columns`` values fill exactly ``ciphertexts_per_row``."""
        if n_columns < 1 or _ceil_div(n_columns, self.slots_per_ciphertext) != self.ciphertexts_per_row:
            raise SpecError("the slot layout does not match the number of columns")

    def check_modulus(self, modulus_bits: int) -> None:
        """Raise SpecError unless plaintexts stay below the smaller prime of such a key."""
        if self.plaintext_bits >= modulus_bits // 2 - 1:
            raise SpecError("the slot layout does not fit below the key's smaller prime")


def pack_row(layout: SlotLayout, values: Sequence[int]) -> list[int]:
    """Pack one row's slot values (each in [0, 2^slot_bits)) into ciphertexts_per_row ints."""
    layout.check_columns(len(values))
    s, bits = layout.slots_per_ciphertext, layout.slot_bits
    limit = 1 << bits
    packed = []
    for start in range(0, s * layout.ciphertexts_per_row, s):
        m = 0
        for v in reversed(values[start : start + s]):
            v = int(v)
            if not 0 <= v < limit:
                raise SpecError("a slot value does not fit its slot")
            m = (m << bits) | v
        packed.append(m)
    return packed


def unpack_row(layout: SlotLayout, packed: Sequence[int], n_columns: int) -> list[int]:
    """Inverse of ``pack_row``; raise DecryptionError if a plaintext is not a valid packing."""
    layout.check_columns(n_columns)
    if len(packed) != layout.ciphertexts_per_row:
        raise DecryptionError("wrong number of plaintexts for one row")
    s, bits = layout.slots_per_ciphertext, layout.slot_bits
    mask = (1 << bits) - 1
    values: list[int] = []
    for index, m in enumerate(packed):
        m = int(m)
        if not 0 <= m < 1 << layout.plaintext_bits:
            raise DecryptionError("a plaintext exceeds the slot layout (wrong key or corrupted)")
        used = min(s, n_columns - index * s)
        for _ in range(used):
            values.append(m & mask)
            m >>= bits
        if m:
            raise DecryptionError("an unused slot is not empty (wrong key or corrupted)")
    return values


def pack_rows(layout: SlotLayout, rows: Sequence[Sequence[int]] | np.ndarray) -> list[list[int]]:
    """``pack_row`` for every row; accepts a uint64 matrix from ``fixedpoint.encode``."""
    as_ints = rows.tolist() if isinstance(rows, np.ndarray) else rows  # exact Python ints
    return [pack_row(layout, row) for row in as_ints]


def unpack_rows(layout: SlotLayout, packed_rows: Sequence[Sequence[int]], n_columns: int) -> list[list[int]]:
    """``unpack_row`` for every row."""
    return [unpack_row(layout, row, n_columns) for row in packed_rows]
