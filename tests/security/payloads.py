"""What a malicious MPC peer sends: the attack payloads of the security review (issue 13).

Pickles are assembled opcode by opcode and never unpickled here: (a) a reduce that would
create a canary file; (b) numpy's dtype BUILD with attacker state — a field at offset
4096 of an 8-byte dtype (out-of-bounds read) and 8 attacker bytes read as an object
pointer; (c) an array claiming 10⁹ elements, as a pickle and as a wire header.
`pickletools.dis` reads each without running it (tests/unit/lasso/test_wire.py).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

from services.lasso.core import wire

PROTO = b"\x80\x02"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _dtype(spec: str) -> bytes:
    """numpy.dtype(spec, False, True) on the stack."""
    return _global("numpy", "dtype") + b"(" + _text(spec) + b"\x89\x88" + b"tR"


def canary_pickle(canary: Path) -> bytes:
    """A pickle whose REDUCE calls os.system to create `canary`."""
    return PROTO + _global("posix", "system") + b"(" + _text(f"touch {canary}") + b"tR."


def dtype_out_of_bounds() -> bytes:
    """An 8-byte void dtype whose BUILD state puts a uint8 field at offset 4096."""
    fields = b"}(" + _text("f") + b"(" + _dtype("u1") + _int(4096) + b"tu"
    state = b"(" + _int(3) + _text("|") + b"N(" + _text("f") + b"t" + fields + _int(8) + _int(1) + _int(0x10) + b"t"
    return PROTO + _dtype("V8") + state + b"b."


def dtype_fake_object() -> bytes:
    """An array of an 8-byte dtype flagged as holding objects, over 8 attacker bytes (a pointer)."""
    fields = b"}(" + _text("o") + b"(" + _dtype("O") + _int(0) + b"tu"
    state = b"(" + _int(3) + _text("|") + b"N(" + _text("o") + b"t" + fields + _int(8) + _int(1) + _int(0x3F) + b"t"
    dtype = _dtype("V8") + state + b"b"
    array = (
        _global("numpy.core.multiarray", "_reconstruct")
        + b"("
        + _global("numpy", "ndarray")
        + b"("
        + _int(0)
        + b"t"
        + b"C\x01b"
        + b"tR"
    )
    array_state = b"(" + _int(1) + b"(" + _int(1) + b"t" + dtype + b"\x89" + b"C\x08" + b"AAAAAAAA" + b"t"
    return PROTO + array + array_state + b"b."


def pickled_billion_elements() -> bytes:
    """A ~100-byte pickle of an object array whose BUILD claims 10⁹ elements."""
    array = (
        _global("numpy.core.multiarray", "_reconstruct")
        + b"("
        + _global("numpy", "ndarray")
        + b"("
        + _int(0)
        + b"t"
        + b"C\x01b"
        + b"tR"
    )
    state = b"(" + _int(1) + b"(" + _int(10**9) + b"t" + _dtype("O") + b"\x89]" + b"t"
    return PROTO + array + state + b"b."


def billion_elements() -> bytes:
    """A 7-byte wire header claiming 10⁹ one-byte elements, with no body."""
    return bytes([wire.FIELD, 1, 1]) + struct.pack("<I", 10**9)


def billion_elements_2d() -> bytes:
    """10⁹ elements as 2 dims whose product is large while each dim looks small-ish."""
    return bytes([wire.FIELD, 21, 2]) + struct.pack("<II", 40_000, 25_000)


def assert_is_pickle(data: bytes) -> None:
    """The payload is a well-formed pickle (read by pickletools, which runs nothing)."""
    import io
    import pickletools

    pickletools.dis(data, out=io.StringIO())
    assert data.startswith(PROTO) and data.endswith(pickle.STOP)
