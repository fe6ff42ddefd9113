"""The crypto workers' fixed formats and caps (services/join/core/workwire.py), and the
decryption path split for them (shares.flatten_masked / shares_from_plaintexts)."""

from __future__ import annotations

import pytest

from services.join.core.errors import SpecError, WireFormatError
from services.join.core.packing import SlotLayout, pack_rows
from services.join.core.paillier import decrypt_many, encrypt_rows, generate_keypair, generate_pool
from services.join.core.shares import decrypts_below_p, flatten_masked, owner_shares, shares_from_plaintexts
from services.join.core.workwire import (
    MAX_CHUNK_ITEMS,
    check_pool_request,
    pack_numbers,
    private_key_from_parts,
    private_key_parts,
    unpack_numbers,
)

BITS = 1024


@pytest.fixture(scope="module")
def key():
    return generate_keypair(BITS)


def test_numbers_round_trip_in_their_fixed_width():
    values = [0, 1, 255, 256, 2**64 - 1]
    data = pack_numbers(values, 9)
    assert len(data) == 45 and unpack_numbers(data, 9) == values


def test_lengths_are_checked_before_anything_is_built():
    with pytest.raises(SpecError):
        pack_numbers([2**72], 9)
    with pytest.raises(WireFormatError):
        unpack_numbers(b"\x00" * 10, 9)  # not whole numbers
    with pytest.raises(WireFormatError):
        unpack_numbers(b"", 9)  # none
    with pytest.raises(WireFormatError):
        unpack_numbers(b"\x00" * 9 * 4, 9, maximum=3)  # more than the cap
    with pytest.raises(WireFormatError):
        unpack_numbers(b"\x00" * 4, 0)


def test_pool_requests_within_the_caps(key):
    check_pool_request(key.public, 1, 0)
    check_pool_request(key.public, MAX_CHUNK_ITEMS, 8)
    for count, window in [(0, 0), (MAX_CHUNK_ITEMS + 1, 0), (10, 17), (10, 16)]:
        with pytest.raises(WireFormatError):
            check_pool_request(key.public, count, window)


def test_a_private_key_travels_as_its_parts_and_is_checked_against_its_public_key(key):
    parts = private_key_parts(key)
    rebuilt = private_key_from_parts(key.public, *parts)
    assert (rebuilt.p, rebuilt.q, rebuilt.a_p, rebuilt.a_q) == (key.p, key.q, key.a_p, key.a_q)
    other = generate_keypair(BITS)
    with pytest.raises(WireFormatError, match="does not match"):
        private_key_from_parts(key.public, *private_key_parts(other))
    p, q, a_p, a_q = parts
    with pytest.raises(WireFormatError, match="wrong length"):
        private_key_from_parts(key.public, p + b"\x00" * 200, q, a_p, a_q)
    with pytest.raises(WireFormatError, match="wrong length"):
        private_key_from_parts(key.public, b"", q, a_p, a_q)


def test_decrypting_elsewhere_then_unpacking_equals_owner_shares(key):
    layout = SlotLayout.for_columns(6, BITS)
    rows = [[(7 * r + c) % 2**64 for c in range(6)] for r in range(5)]
    packed = pack_rows(layout, rows)
    masked = encrypt_rows(key.public, packed, generate_pool(key.public, sum(len(r) for r in packed)))
    columns = tuple(f"c{k}" for k in range(6))
    flat = flatten_masked(layout, masked)
    plain = decrypt_many(key, flat, below_p=decrypts_below_p(key, layout))  # what a worker returns
    assert shares_from_plaintexts(layout, plain, columns) == owner_shares(key, layout, masked, columns)
    assert shares_from_plaintexts(layout, plain, columns).values == rows
    with pytest.raises(WireFormatError):
        flatten_masked(layout, [row[:-1] for row in masked] if layout.ciphertexts_per_row > 1 else [[]])
