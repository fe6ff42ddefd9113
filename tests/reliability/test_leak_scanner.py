"""The leak scanner finds every kind of needle, wherever it sits in a blob, and nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

import pytest

from services.reliability import leaks
from services.reliability.leaks import (
    Needle,
    PatientId,
    Scanner,
    id_needles,
    tag_key_needles,
    tag_needles,
    value_needles,
    value_text_needles,
    value_texts,
)

PATIENT = PatientId("02/03/1975", "1234 gh", "1975-03-02|1234GH")
KEY = bytes(range(32))


def test_id_needles_cover_every_written_and_canonical_form() -> None:
    forms = {n.data.decode() for n in id_needles([PATIENT])}
    assert {"02/03/1975", "1234 gh", "1975-03-02|1234GH", "1975-03-02", "1234GH", "1234gh", "02-03-1975"} <= forms


def test_value_texts_drop_the_sign_and_short_forms() -> None:
    assert value_texts("-12.345678") == {"12.345678"}
    assert value_texts("1.500000") == {"1.500000"}  # repr "1.5" is too short to search for


def noise(length: int) -> bytes:
    """Random bytes that cannot extend a number (a decimal needle counts only as a whole number)."""
    return bytes(b"x"[0] if chr(b) in "0123456789.-" else b for b in os.urandom(length))


def test_every_needle_kind_is_found_at_any_offset() -> None:
    tag = hmac.digest(KEY, PATIENT.canonical.encode(), hashlib.sha256)
    scanner = Scanner(
        id_needles([PATIENT])
        + value_needles(["-12.345678"])
        + tag_needles([PATIENT.canonical], [KEY])
        + tag_key_needles([KEY])
    )
    planted = [
        b"1975-03-02|1234GH",
        b"12.345678",
        struct.pack(">d", -12.345678),
        tag,
        tag.hex().encode(),
        base64.b64encode(tag),
        KEY.hex().encode(),
    ]
    for needle in planted:
        for offset in (0, 1, 7, 1000):
            blob = noise(offset) + needle + noise(50)
            assert needle in {f.needle.data for f in scanner.scan_bytes(blob, "blob")}, (needle, offset)


def test_a_needle_across_two_pieces_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaks, "PIECE_BYTES", 64)
    scanner = Scanner(id_needles([PATIENT]))
    blob = b"x" * 60 + b"1975-03-02|1234GH" + b"y" * 100
    assert [f.offset for f in scanner.scan_bytes(blob, "b") if f.needle.data == b"1975-03-02|1234GH"] == [60]


def test_random_bytes_and_ordinary_log_text_hold_no_needle() -> None:
    scanner = Scanner(
        id_needles([PATIENT]) + value_needles(["-12.345678", "3.141593"]) + tag_needles([PATIENT.canonical], [KEY])
    )
    text = (
        b"2026-11-25 14:39:10,955 INFO gateway riskmesh.server: "
        b"gateway of insurer serving mTLS on 7100, health on 7110\n" * 50
    )
    assert scanner.scan_bytes(os.urandom(200_000) + text, "noise") == []


def test_needles_too_short_to_mean_anything_are_refused() -> None:
    with pytest.raises(ValueError):
        Scanner([Needle("value", b"1.5")])


def test_a_value_inside_a_longer_number_or_a_clock_time_is_not_a_finding() -> None:
    scanner = Scanner(value_needles(["21.982426", "1.847332"]))
    noise = b'"start_time":"2026-11-25T15:23:21.982426Z" 01.847332 11.8473321 asctime 15:23:01,847 '
    assert scanner.scan_bytes(noise, "spans") == []
    for leak in (b'{"x":21.982426}', b"value -1.847332 here", b"1.847332"):
        assert scanner.scan_bytes(leak, "leak"), leak


def test_decimal_needles_of_every_dataset_are_whole_numbers_and_metric_durations_are_not_values() -> None:
    """A metrics file's histogram (durations in seconds) holds numbers that begin with a
    value's digits; they are other numbers. The value itself, as a number there, is found."""
    assert all(n.whole_number for n in value_text_needles(["0.030095", "-1.847332"]))
    scanner = Scanner(value_text_needles(["0.030095", "-1.847332"]))
    metrics = b'{"count": 1, "sum": 0.030095037, "min": 0.030095037, "max": 1.8473321, "bounds": [0.0, 5.0]}'
    assert scanner.scan_bytes(metrics, "metrics") == []
    assert scanner.scan_bytes(b'{"sum": 0.030095, "max": -1.847332}', "leak") != []


def test_a_postal_code_alone_counts_only_as_a_whole_word() -> None:
    """ "4011 ro" is a postal code's spaced form, and also the end of a run id before a logger's
    name; "4011ro" a digest's end before an org's name in a SQLite record. The ID's other forms
    are found anywhere."""
    patient = PatientId("1975-03-02", "4011 RO", "1975-03-02|4011RO")
    scanner = Scanner(id_needles([patient]))
    for chance in (b"INFO lasso-worker helper/load-3-c05c74d14011 root: Stop MPyC", b"\x07c67a64011roinsurer\x00"):
        assert scanner.scan_bytes(chance, "chance") == [], chance
    for leak in (
        b"postal code 4011 ro,",
        b"(4011 RO)",
        b"4011RO",
        b'"4011ro"',
        b"x1975-03-02|4011ROy",
        b"x1975-03-02y",
    ):
        assert scanner.scan_bytes(leak, "leak"), leak
