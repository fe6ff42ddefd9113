"""The bytes MPC parties send each other: a fixed binary format, never pickle.

Every MPyC message between two parties (MPyC's own `input`, `output`, `_reshare` and
`transfer`, and riskmesh's field operations in services.lasso.mpc.secure_ops) is one
wire message:

    u8 kind | u8 width | u8 ndim | ndim × u32 dims | count × width bytes

all little-endian, count = the product of the dims (1 for ndim = 0). Kinds:

    FIELD  an array of non-negative integers (field elements), `width` bytes each
    BYTES  a byte string: width 1, ndim 1
    INT    one signed integer (MPyC's shutdown sends its party id): width ≤ 16, ndim 0

Decoding builds only ints, bytes and numpy object arrays of ints. It checks the header
first — known kind, width and ndim in range, count ≤ MAX_ELEMENTS, the body exactly
count × width bytes, the message ≤ MAX_MESSAGE_BYTES — so nothing is allocated for what
the header merely claims; a caller that knows the field (`decode_field`) also fixes the
width to the prime's, the count to what it awaits, and rejects any value ≥ p. A pickle
starts with 0x80, which is no kind. Error messages name the rule, never a value.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Any, cast

import numpy as np
import numpy.typing as npt

ObjectArray = npt.NDArray[np.object_]

FIELD = 1
BYTES = 2
INT = 3
KINDS = {FIELD: "field array", BYTES: "byte string", INT: "integer"}

#: Largest message: gRPC's message limit on the mesh (services.mesh.tls.MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Largest field element: 1024 bits (the lasso's primes are below 400 bits).
MAX_WIDTH = 128
#: Largest INT: the party ids and counts MPyC transfers fit easily.
MAX_INT_WIDTH = 16
#: Most elements in one array: 16× the lasso's largest batch (2^17 random bits); decoded,
#: that is < 2^21 · (64 + 8) bytes ≈ 150 MB at the worst width, whatever the header claims.
MAX_ELEMENTS = 1 << 21
MAX_NDIM = 4
#: Elements decoded per step, so the temporary bytes objects stay small.
DECODE_CHUNK = 1 << 16

_HEAD = struct.Struct("<BBB")


class WireError(ValueError):
    """Bytes from an MPC peer are not a well-formed message (the message names the rule)."""


class PeerDataError(WireError):
    """A message from MPC party `peer` was refused (names the party and the rule)."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"MPC party {peer} sent a malformed message: {reason}")
        self.peer = peer


class PeerMessage(bytes):
    """A message as received from MPC party `peer`: the worker's transport labels each one,
    so a refusal deep inside MPyC still names who sent it."""

    peer: int


def from_peer(payload: bytes, peer: int) -> PeerMessage:
    message = PeerMessage(payload)
    message.peer = peer
    return message


def _refused(data: bytes, exc: WireError) -> WireError:
    peer = getattr(data, "peer", None)
    return exc if peer is None or isinstance(exc, PeerDataError) else PeerDataError(peer, str(exc))


# int's converters as map() takes them (typeshed's byteorder is a Literal; these always get "little").
_TO_BYTES = cast(Callable[[int, int, str], bytes], int.to_bytes)
_FROM_BYTES = cast(Callable[[bytes, str], int], int.from_bytes)


# ---- header -------------------------------------------------------------------------------


def _header(kind: int, width: int, shape: Sequence[int]) -> bytes:
    return _HEAD.pack(kind, width, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)


def parse_header(data: bytes | memoryview) -> tuple[int, int, tuple[int, ...], int]:
    """(kind, width, shape, body offset) of a message, after every check that needs no field.

    Cheap (no allocation proportional to the message): the lasso server runs it on every
    message a peer sends before relaying it to its worker.
    """
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    if size < _HEAD.size:
        raise WireError("message shorter than its header")
    kind, width, ndim = _HEAD.unpack_from(data)
    if kind not in KINDS:
        raise WireError(f"unknown message kind {kind}")
    if ndim > MAX_NDIM:
        raise WireError(f"{ndim} dimensions exceed the limit of {MAX_NDIM}")
    offset = _HEAD.size + 4 * ndim
    if size < offset:
        raise WireError("message shorter than its header")
    shape = struct.unpack_from(f"<{ndim}I", data, _HEAD.size)
    count = 1
    for n in shape:
        count *= n
    _check_kind(kind, width, ndim, count)
    if size - offset != count * width:
        raise WireError(f"body of {size - offset} bytes, the header says {count} × {width}")
    return kind, width, shape, offset


def _check_kind(kind: int, width: int, ndim: int, count: int) -> None:
    """What each kind of message may declare: field arrays a bounded width and count, byte
    strings one dimension of single bytes, integers no dimension and a bounded width."""
    if kind == FIELD:
        if not 1 <= width <= MAX_WIDTH:
            raise WireError(f"element width {width} is outside 1..{MAX_WIDTH}")
        if count > MAX_ELEMENTS:
            raise WireError(f"{count} elements exceed the limit of {MAX_ELEMENTS}")
    elif kind == BYTES and (width != 1 or ndim != 1):
        raise WireError("a byte string has width 1 and one dimension")
    elif kind == INT and (not 1 <= width <= MAX_INT_WIDTH or ndim != 0):
        raise WireError(f"an integer has no dimensions and a width of 1..{MAX_INT_WIDTH}")


def check(data: bytes) -> None:
    """Raise WireError unless `data` is a well-formed message (header and length)."""
    parse_header(data)


# ---- encoding -----------------------------------------------------------------------------


def width_for(modulus: int) -> int:
    """Bytes per element of a field of this order (MPyC's `byte_length`)."""
    return max(1, (modulus.bit_length() + 7) // 8)


def _as_ints(values: Any) -> tuple[Sequence[int] | npt.NDArray[Any], tuple[int, ...]]:
    if isinstance(values, list):  # not through numpy: it makes floats of ints in [2^63, 2^64)
        return values, (len(values),)
    array = np.asarray(values)
    if array.dtype != object and not np.issubdtype(array.dtype, np.integer):
        raise WireError(f"cannot send an array of {array.dtype} to an MPC peer")
    flat = array.reshape(-1)
    return (flat.tolist() if array.dtype != object else flat), array.shape


def encode_ints(values: Any, width: int | None = None) -> bytes:
    """A FIELD message of non-negative integers (list or array), `width` bytes each.

    Without `width` (MPyC's array marshalling, which does not pass the field) the
    width is the byte length of the largest value.
    """
    ints, shape = _as_ints(values)
    if width is None:
        width = max(1, (int(max(ints, default=0)).bit_length() + 7) // 8)
    if (
        len(shape) > MAX_NDIM
        or not 1 <= width <= MAX_WIDTH
        or len(ints) > MAX_ELEMENTS
        or any(n > 0xFFFFFFFF for n in shape)
    ):
        raise WireError("array too large for an MPC message")
    try:
        try:
            body = b"".join(map(_TO_BYTES, ints, repeat(width), repeat("little")))
        except TypeError:  # numpy or gmpy2 integers (never floats: index() refuses them)
            body = b"".join(operator.index(v).to_bytes(width, "little") for v in ints)
    except TypeError:
        raise WireError("cannot send a value that is not an integer to an MPC peer") from None
    except OverflowError:
        raise WireError("a value is negative or wider than the element width") from None
    return _header(FIELD, width, shape) + body


def encode_bytes(data: bytes) -> bytes:
    return _header(BYTES, 1, (len(data),)) + data


def encode_int(value: int) -> bytes:
    width = max(1, (value.bit_length() + 8) // 8)  # room for the sign
    if width > MAX_INT_WIDTH:
        raise WireError("integer too large for an MPC message")
    return _header(INT, width, ()) + value.to_bytes(width, "little", signed=True)


def dumps(obj: Any) -> bytes:
    """Encode what MPyC sends: an array or list of field values, bytes, or an int.

    Stands in for `pickle.dumps` in MPyC's runtime module (services.lasso.mpc.runtime).
    Anything else is refused by type name: MPyC never needs it in riskmesh's programs.
    """
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return encode_bytes(bytes(obj))
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return encode_int(int(obj))
    if isinstance(obj, (np.ndarray, list)):
        return encode_ints(obj)
    raise WireError(f"cannot send a {type(obj).__name__} to an MPC peer")


# ---- decoding -----------------------------------------------------------------------------


def _decode_ints(body: memoryview, width: int, count: int, bound: int | None) -> list[int]:
    out: list[int] = []
    for start in range(0, count, DECODE_CHUNK):
        stop = min(start + DECODE_CHUNK, count)
        # Fixed-width byte strings; numpy drops trailing NULs, which are high zero bytes here.
        chunk = list(
            map(
                _FROM_BYTES,
                np.frombuffer(body[start * width : stop * width], dtype=f"S{width}").tolist(),
                repeat("little"),
            )
        )
        if bound is not None and chunk and max(chunk) >= bound:
            raise WireError("a value is not below the field's modulus")
        out += chunk
    return out


def _object_array(ints: list[int], shape: tuple[int, ...]) -> ObjectArray:
    array = np.empty(len(ints), dtype=object)
    array[:] = ints
    return array.reshape(shape)


def loads(data: bytes) -> Any:
    """Decode a message: an object array of ints, bytes or an int. Stands in for `pickle.loads`."""
    try:
        return _loads(data)
    except WireError as exc:
        raise _refused(data, exc) from None


def _loads(data: bytes) -> Any:
    kind, width, shape, offset = parse_header(data)
    body = memoryview(data)[offset:]
    if kind == BYTES:
        return bytes(body)
    if kind == INT:
        return int.from_bytes(body, "little", signed=True)
    count = len(body) // width
    return _object_array(_decode_ints(body, width, count, None), shape)


def decode_values(data: bytes, modulus: int, count: int | None = None) -> list[int]:
    """The elements of a FIELD message of this field: width = the field's, every value < modulus.

    With `count`, the message must hold exactly that many elements (checked before decoding).
    """
    try:
        return _decode_values(data, modulus, count)
    except WireError as exc:
        raise _refused(data, exc) from None


def _decode_values(data: bytes, modulus: int, count: int | None) -> list[int]:
    kind, width, shape, offset = parse_header(data)
    if kind != FIELD:
        raise WireError(f"expected a field array, got a {KINDS[kind]}")
    if width != width_for(modulus):
        raise WireError(f"{width}-byte elements, the field's are {width_for(modulus)} bytes")
    n = (len(data) - offset) // width
    if count is not None and n != count:
        raise WireError(f"{n} elements, {count} expected")
    return _decode_ints(memoryview(data)[offset:], width, n, modulus)


def decode_field(data: bytes, modulus: int, count: int) -> ObjectArray:
    """`decode_values` as a flat object array of exactly `count` elements."""
    return _object_array(decode_values(data, modulus, count), (count,))
