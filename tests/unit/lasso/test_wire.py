"""The MPC wire format: round trips, and every malformed message refused before allocation."""

from __future__ import annotations

import secrets
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from services.lasso.core import wire
from tests.security import payloads

P = (1 << 167) - 115  # any modulus works for the format; this one needs 21 bytes


def test_field_arrays_round_trip_at_the_fields_width() -> None:
    values = np.array([secrets.randbelow(P) for _ in range(300)] + [0, 1, P - 1], dtype=object)
    data = wire.encode_ints(values, wire.width_for(P))
    assert len(data) == 3 + 4 + 303 * 21
    assert list(wire.decode_field(data, P, 303)) == list(values)
    back = wire.loads(data)
    assert back.dtype == object and back.shape == (303,) and list(back) == list(values)


def test_mpycs_objects_round_trip() -> None:
    matrix = np.array([[secrets.randbelow(P) for _ in range(4)] for _ in range(3)], dtype=object)
    assert (wire.loads(wire.dumps(matrix)) == matrix).all() and wire.loads(wire.dumps(matrix)).shape == (3, 4)
    assert list(wire.loads(wire.dumps(np.arange(5, dtype=np.int64)))) == [0, 1, 2, 3, 4]
    assert list(wire.loads(wire.dumps([3, 1 << 100]))) == [3, 1 << 100]
    assert list(wire.loads(wire.dumps([1 << 63, 1]))) == [1 << 63, 1]  # numpy would make floats of these
    assert wire.loads(wire.dumps(b"\x00digest")) == b"\x00digest"
    for pid in (0, 2, -1, 1 << 70):
        assert wire.loads(wire.dumps(pid)) == pid
    assert wire.loads(wire.dumps(np.zeros(0, dtype=object))).shape == (0,)


def test_anything_else_is_refused_by_type_name() -> None:
    for obj in ((1, 2), {"a": 1}, "text", 1.5, None, np.array([1.5])):
        with pytest.raises(wire.WireError, match="cannot send"):
            wire.dumps(obj)
    with pytest.raises(wire.WireError, match="negative or wider"):
        wire.encode_ints([-1], 4)
    with pytest.raises(wire.WireError, match="not an integer"):
        wire.dumps([1, 2.5])
    assert list(wire.loads(wire.dumps(np.array([np.int64(7), 1 << 70], dtype=object)))) == [7, 1 << 70]


@pytest.mark.parametrize(
    "data, rule",
    [
        (b"", "shorter than its header"),
        (bytes([wire.FIELD, 21, 2, 0, 0]), "shorter than its header"),
        (bytes([9, 1, 0]), "unknown message kind 9"),
        (bytes([wire.FIELD, 0, 0]), "element width 0"),
        (bytes([wire.FIELD, 200, 0]) + bytes(200), "element width 200"),
        (bytes([wire.FIELD, 1, 9]) + bytes(36), "9 dimensions"),
        (bytes([wire.BYTES, 2, 1]) + struct.pack("<I", 1) + b"ab", "byte string has width 1"),
        (bytes([wire.INT, 17, 0]) + bytes(17), "an integer has no dimensions"),
        (bytes([wire.FIELD, 21, 1]) + struct.pack("<I", 10) + bytes(209), "body of 209 bytes, the header says 10 × 21"),
        (bytes([wire.FIELD, 21, 1]) + struct.pack("<I", 10) + bytes(211), "body of 211 bytes"),
    ],
)
def test_malformed_headers_are_refused(data: bytes, rule: str) -> None:
    with pytest.raises(wire.WireError, match=rule):
        wire.loads(data)


def test_a_tiny_message_claiming_a_billion_elements_allocates_nothing() -> None:
    tracemalloc.start()
    try:
        for data in (payloads.billion_elements(), payloads.billion_elements_2d()):
            with pytest.raises(wire.WireError, match="exceed the limit"):
                wire.loads(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_oversized_messages_are_refused_before_reading_them() -> None:
    with pytest.raises(wire.WireError, match="exceeds the limit"):
        wire.check(bytes(wire.MAX_MESSAGE_BYTES + 1))


def test_the_field_fixes_width_count_and_range() -> None:
    good = wire.encode_ints([1, 2, 3], 21)
    with pytest.raises(wire.WireError, match="8-byte elements, the field's are 21"):
        wire.decode_field(wire.encode_ints([1, 2, 3], 8), P, 3)
    with pytest.raises(wire.WireError, match="3 elements, 4 expected"):
        wire.decode_field(good, P, 4)
    with pytest.raises(wire.WireError, match="not below the field's modulus"):
        wire.decode_field(wire.encode_ints([1, P, 3], 21), P, 3)
    with pytest.raises(wire.WireError, match="expected a field array"):
        wire.decode_field(wire.dumps(b"abc"), P, 3)


def test_pickles_are_never_unpickled(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    for data in (
        payloads.canary_pickle(canary),
        payloads.dtype_out_of_bounds(),
        payloads.dtype_fake_object(),
        payloads.pickled_billion_elements(),
    ):
        assert data[:1] == b"\x80"  # a pickle's PROTO opcode is no wire kind
        with pytest.raises(wire.WireError, match="unknown message kind 128"):
            wire.loads(data)
    assert not canary.exists()


def test_the_attack_payloads_are_real_pickles(tmp_path: Path) -> None:
    for data in (
        payloads.canary_pickle(tmp_path / "canary"),
        payloads.dtype_out_of_bounds(),
        payloads.dtype_fake_object(),
        payloads.pickled_billion_elements(),
    ):
        payloads.assert_is_pickle(data)


def test_a_refusal_names_the_party_a_labelled_message_came_from() -> None:
    with pytest.raises(
        wire.PeerDataError, match=r"^MPC party 2 sent a malformed message: unknown message kind 128$"
    ) as err:
        wire.loads(wire.from_peer(b"\x80\x04junk", 2))
    assert err.value.peer == 2
    with pytest.raises(wire.PeerDataError, match=r"^MPC party 1 sent a malformed message: a value is not below"):
        wire.decode_values(wire.from_peer(wire.encode_ints([P], 21), 1), P)
    assert wire.loads(wire.from_peer(wire.dumps(b"ok"), 1)) == b"ok"
