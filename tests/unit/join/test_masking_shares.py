"""Helper matching and masking, owners' resharing, share assembly and the share wire format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.join.core.errors import (
    DuplicateTagError,
    IntersectionTooSmallError,
    SpecError,
    WireFormatError,
)
from services.join.core.masking import draw_masks, mask_rows, permute, random_permutation
from services.join.core.matching import check_minimum, match_tag_arrays, match_tags, tag_array
from services.join.core.packing import SlotLayout, pack_rows
from services.join.core.paillier import PrivateKey, encrypt_rows, generate_pool
from services.join.core.shares import (
    ShareMatrix,
    assemble,
    decode_shares,
    encode_shares,
    owner_shares,
    reconstruct,
    value_bytes,
)

LAYOUT = SlotLayout.for_columns(5, 1024)  # two ciphertexts per row at 1024 bits
WIDTH = value_bytes(LAYOUT)


def _tag(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_match_tags() -> None:
    tags_a = [_tag(i) for i in (5, 1, 9, 3)]
    tags_b = [_tag(i) for i in (3, 4, 5)]
    assert match_tags(tags_a, tags_b) == [(0, 2), (3, 0)]
    assert match_tags(tags_a, []) == []


@given(
    a=st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=40),
    b=st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=40),
)
def test_tag_arrays_match_like_a_dict(a: list[bytes], b: list[bytes]) -> None:
    # Tags that differ only in trailing zero bytes must not compare equal (raw-byte dtype).
    a = a + [b"\x07" * 31 + b"\x00"]
    b = b + [b"\x07" * 31 + b"\x01"]
    index_b = {t: j for j, t in enumerate(b)}
    expected = [(i, index_b[t]) for i, t in enumerate(a) if t in index_b]
    ia, ib = match_tag_arrays(tag_array(b"".join(a), "A"), tag_array(b"".join(b), "B"))
    assert list(zip(ia.tolist(), ib.tolist(), strict=True)) == expected == match_tags(a, b)


def test_tag_array_checks() -> None:
    with pytest.raises(WireFormatError):
        tag_array(b"x" * 33, "A")
    with pytest.raises(DuplicateTagError):
        tag_array(_tag(3) + _tag(4) + _tag(3), "B")
    assert len(tag_array(b"", "A")) == 0


def test_match_rejects_duplicates_and_bad_tags() -> None:
    with pytest.raises(DuplicateTagError):
        match_tags([_tag(1), _tag(1)], [_tag(1)])
    with pytest.raises(DuplicateTagError):
        match_tags([_tag(1)], [_tag(2), _tag(2)])
    with pytest.raises(WireFormatError):
        match_tags([b"short"], [_tag(1)])


def test_minimum_intersection() -> None:
    check_minimum(10, 10)
    with pytest.raises(IntersectionTooSmallError) as info:
        check_minimum(7, 10)
    assert "7" not in str(info.value) and "10" in str(info.value)
    with pytest.raises(IntersectionTooSmallError):
        check_minimum(0, 0)  # an empty join never runs


def test_permutation() -> None:
    perm = random_permutation(50)
    assert sorted(perm) == list(range(50))
    assert permute(["a", "b", "c"], [2, 0, 1]) == ["c", "a", "b"]
    with pytest.raises(ValueError):
        permute(["a"], [0, 1])


def test_masks_in_range() -> None:
    masks = draw_masks(200, 5, LAYOUT)
    flat = [r for row in masks for r in row]
    assert len(flat) == 1000 and all(0 <= r < 2**104 for r in flat)
    assert max(flat) > 2**100  # uniform over 104 bits, not over 64


def test_mask_and_reshare_reconstruct(key_b: PrivateKey) -> None:
    import secrets

    columns = ("a", "b", "c", "d", "e")
    plain = [[secrets.randbits(64) for _ in columns] for _ in range(40)]
    plain[0] = [0] * 5
    plain[1] = [2**64 - 1] * 5
    cts = encrypt_rows(key_b.public, pack_rows(LAYOUT, plain), generate_pool(key_b.public, 80))
    perm = random_permutation(len(cts))
    masked = mask_rows(key_b.public, LAYOUT, permute(cts, perm), len(columns))
    assert all(
        m != c
        for mrow, crow in zip(masked.ciphertexts, permute(cts, perm), strict=True)
        for m, c in zip(mrow, crow, strict=True)
    )
    owner = owner_shares(key_b, LAYOUT, masked.ciphertexts, columns, threads=2)
    helper = ShareMatrix(columns, masked.helper_shares)
    total = reconstruct([owner, helper])
    undone: list[list[int]] = [[] for _ in perm]
    for k, src in enumerate(perm):
        undone[src] = total.values[k]
    assert undone == plain
    assert all(0 <= v < 2**105 for row in owner.values for v in row)
    assert all(-(2**104) < v <= 0 for row in helper.values for v in row)
    assert repr(masked) == "MaskedRows(rows=40)"


def test_mask_rows_rejects_malformed_rows(key_b: PrivateKey) -> None:
    with pytest.raises(WireFormatError):
        mask_rows(key_b.public, LAYOUT, [[1]], 5)
    with pytest.raises(WireFormatError):
        mask_rows(key_b.public, LAYOUT, [[0, 1]], 5)


def test_owner_shares_detects_wrong_key(key_a: PrivateKey, key_b: PrivateKey) -> None:
    from services.join.core.errors import DecryptionError

    cts = encrypt_rows(key_b.public, pack_rows(LAYOUT, [[1, 2, 3, 4, 5]]), generate_pool(key_b.public, 2))
    masked = mask_rows(key_b.public, LAYOUT, cts, 5)
    with pytest.raises(DecryptionError):
        owner_shares(key_a, LAYOUT, masked.ciphertexts, "abcde")


def test_assemble() -> None:
    a = ShareMatrix(("x",), [[1], [2]])
    b = ShareMatrix(("z", "y"), [[30, 20], [31, 21]])
    full = assemble(("x", "y", "z"), [b, a], 2)
    assert full.values == [[1, 20, 30], [2, 21, 31]]
    assert assemble(("x", "y"), [], 2).values == [[0, 0], [0, 0]]
    with pytest.raises(SpecError):
        assemble(("x",), [a, a], 2)
    with pytest.raises(SpecError):
        assemble(("x",), [ShareMatrix(("q",), [[1], [2]])], 2)
    with pytest.raises(SpecError):
        assemble(("x",), [a], 3)
    assert "20" not in repr(full)


def test_value_bytes() -> None:
    assert WIDTH == 14


share = st.integers(min_value=-(2**104) + 1, max_value=2**105 - 1)


@given(st.lists(st.lists(share, min_size=3, max_size=3), max_size=8))
def test_share_wire_round_trip(values: list[list[int]]) -> None:
    data = encode_shares(values, WIDTH)
    assert len(data) == 3 * WIDTH * len(values)
    assert decode_shares(data, 3, WIDTH) == values


def test_share_wire_format_is_little_endian_twos_complement() -> None:
    assert encode_shares([[1, -1]], 14) == b"\x01" + b"\x00" * 13 + b"\xff" * 14
    extremes = [[2**105 - 1, -(2**104) + 1]]
    assert decode_shares(encode_shares(extremes, 14), 2, 14) == extremes


def test_share_wire_errors() -> None:
    with pytest.raises(SpecError):
        encode_shares([[2**111]], 14)
    with pytest.raises(WireFormatError):
        decode_shares(b"\x00" * 15, 1, 14)
    with pytest.raises(WireFormatError):
        decode_shares(b"", 0, 14)
