"""The local link's frames: every kind round-trips, bytes may arrive in any split."""

from __future__ import annotations

import struct

import pytest

from services.lasso.worker.frames import (
    Close,
    Dial,
    Failed,
    FrameDecoder,
    FrameError,
    Input,
    InputEnd,
    PeerClosed,
    PeerLost,
    PeerUp,
    Recv,
    Report,
    Result,
    Send,
    Start,
    Traffic,
    encode,
)

ALL_KINDS = [
    Start(1, b"\x0a\x03run"),
    Input(b"\x00" * 40),
    InputEnd(),
    Dial(2, b"k" * 32),
    PeerUp(0, b""),
    Send(1, -(2**63), b"payload"),
    Recv(2, 2**63 - 1, b""),
    Close(2),
    PeerClosed(1),
    PeerLost(2, "MPC party 2 (helper) was lost during PHASE_GRAM (UNAVAILABLE)"),
    Report(7, 40, 100),
    Traffic(9, 12, 345, 2**40 + 3),
    Result(b"\x1a\x02ok"),
    Failed("the MPC computation raised ValueError"),
]


def test_every_kind_round_trips_in_one_feed():
    data = b"".join(encode(f) for f in ALL_KINDS)
    decoder = FrameDecoder()
    assert decoder.feed(data) == ALL_KINDS
    assert decoder.pending == 0


def test_frames_split_at_every_byte_boundary():
    data = b"".join(encode(f) for f in ALL_KINDS)
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == ALL_KINDS


def test_unknown_kind_is_refused():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("<IB", 1, 99))


def test_absurd_length_is_refused():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("<IB", 2**31, 6))


def test_truncated_body_of_fixed_fields_is_refused():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("<IB", 2, 6) + b"\x01")


def test_layout_on_the_wire():
    """`u32 length | u8 kind | fixed little-endian fields | trailing bytes`, as the module docstring says."""
    assert encode(Send(1, -2, b"ab")) == struct.pack("<IBHq", 13, 6, 1, -2) + b"ab"
    assert encode(PeerLost(2, "é")) == struct.pack("<IBH", 5, 10, 2) + "é".encode()
    assert encode(Report(3, 4, 5)) == struct.pack("<IBBQQ", 18, 11, 3, 4, 5)
    assert encode(InputEnd()) == struct.pack("<IB", 1, 3)


@pytest.mark.parametrize("kind", [4, 5, 8, 9, 10, 11, 14])
def test_truncated_fixed_fields_of_every_kind_are_refused(kind):
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("<IB", 2, kind) + b"\x01")


@pytest.mark.parametrize("kind", [10, 13])
def test_text_that_is_not_utf8_is_refused(kind):
    body = b"\x01\x00\xff\xfe" if kind == 10 else b"\xff\xfe"
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("<IB", len(body) + 1, kind) + body)
