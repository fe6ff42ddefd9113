"""Slot layout and packing: sizes per modulus, round trips incl. extremes, no carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.join.core.errors import DecryptionError, SpecError
from services.join.core.packing import SlotLayout, pack_row, pack_rows, unpack_row, unpack_rows


@pytest.mark.parametrize(
    ("columns", "bits", "slots", "per_row"),
    [(5, 2048, 5, 1), (9, 2048, 9, 1), (10, 2048, 5, 2), (5, 1024, 3, 2), (4, 1024, 4, 1), (14, 3072, 14, 1)],
)
def test_layout_sizes(columns: int, bits: int, slots: int, per_row: int) -> None:
    layout = SlotLayout.for_columns(columns, bits)
    assert (layout.slot_bits, layout.slots_per_ciphertext, layout.ciphertexts_per_row) == (105, slots, per_row)
    assert layout.plaintext_bits < bits // 2 - 1  # below the smaller prime
    layout.check_modulus(bits)
    layout.check_columns(columns)


def test_layout_checks() -> None:
    layout = SlotLayout.for_columns(9, 2048)
    with pytest.raises(SpecError):
        layout.check_modulus(1024)
    with pytest.raises(SpecError):
        layout.check_columns(10)
    with pytest.raises(SpecError):
        SlotLayout(32, 64, 40, 104, 5, 1)  # slot bits must be ℓ + σ + 1
    with pytest.raises(SpecError):
        SlotLayout.for_columns(0, 2048)


def _rows(layout: SlotLayout, bits: int) -> st.SearchStrategy[list[int]]:
    n = layout.slots_per_ciphertext * layout.ciphertexts_per_row - 1
    value = st.one_of(st.just(0), st.just((1 << bits) - 1), st.integers(0, (1 << bits) - 1))
    return st.lists(value, min_size=n, max_size=n)


LAYOUT = SlotLayout.for_columns(5, 1024)  # 3 + 2 slots: the last ciphertext is part-filled


@given(_rows(LAYOUT, LAYOUT.slot_bits))
def test_round_trip(values: list[int]) -> None:
    packed = pack_row(LAYOUT, values)
    assert len(packed) == 2 and all(0 <= m < 1 << LAYOUT.plaintext_bits for m in packed)
    assert unpack_row(LAYOUT, packed, len(values)) == values


@given(_rows(LAYOUT, 64), _rows(LAYOUT, 104))
def test_masked_slots_do_not_carry(x: list[int], r: list[int]) -> None:
    summed = [a + b for a, b in zip(pack_row(LAYOUT, x), pack_row(LAYOUT, r), strict=False)]
    assert unpack_row(LAYOUT, summed, 5) == [a + b for a, b in zip(x, r, strict=False)]


def test_pack_rows_accepts_uint64_matrix() -> None:
    import numpy as np

    layout = SlotLayout.for_columns(2, 2048)
    matrix = np.array([[0, 2**64 - 1], [2**63, 1]], dtype=np.uint64)
    packed = pack_rows(layout, matrix)
    assert unpack_rows(layout, packed, 2) == [[0, 2**64 - 1], [2**63, 1]]


def test_pack_rejects_values_outside_a_slot() -> None:
    with pytest.raises(SpecError):
        pack_row(LAYOUT, [0, 0, 0, 0, 1 << 105])
    with pytest.raises(SpecError):
        pack_row(LAYOUT, [0, 0, 0, 0, -1])
    with pytest.raises(SpecError):
        pack_row(LAYOUT, [0, 0, 0])


def test_unpack_detects_garbage() -> None:
    with pytest.raises(DecryptionError):
        unpack_row(LAYOUT, [1 << LAYOUT.plaintext_bits, 0], 5)
    with pytest.raises(DecryptionError):
        unpack_row(LAYOUT, [0, 1 << (2 * LAYOUT.slot_bits)], 5)  # unused third slot of the last one
    with pytest.raises(DecryptionError):
        unpack_row(LAYOUT, [0], 5)
