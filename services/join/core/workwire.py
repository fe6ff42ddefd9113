"""The crypto workers' fixed formats (proto/riskmesh/v1/crypto_worker.proto), pure.

Numbers travel big-endian in a fixed width, concatenated: pool elements and ciphertexts in the
key's ciphertext width ⌈bits(N²)/8⌉, plaintexts in the width of N. Every length is checked
against the width and the caps before anything is allocated or computed; a private key's parts
are length-checked before they become integers and then checked against the public key
(``PrivateKey`` refuses p·q ≠ N, a_p ∤ (p − 1)/2, h_s outside the subgroup).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.join.core.errors import SpecError, WireFormatError
from services.join.core.paillier import MAX_TABLE_BYTES, PrivateKey, PublicKey

# Most elements or ciphertexts one request may carry: 20,000 × 768 B ≈ 15 MB at 3072 bits
# (gRPC's 64 MiB message cap holds it at 8192 bits too). The servers send chunks of ≤ 2,000.
MAX_CHUNK_ITEMS = 20_000
MAX_WINDOW_BITS = 16


def plaintext_bytes(key: PublicKey) -> int:
    """Width of a plaintext on the wire: the width of N."""
    return (key.bits + 7) // 8


def pack_numbers(values: Sequence[int], width: int) -> bytes:
    """Big-endian, ``width`` bytes each, concatenated."""
    try:
        return b"".join(int(v).to_bytes(width, "big") for v in values)
    except OverflowError:
        raise SpecError("a number does not fit its fixed width") from None


def unpack_numbers(data: bytes, width: int, maximum: int = MAX_CHUNK_ITEMS) -> list[int]:
    """Inverse of ``pack_numbers``; WireFormatError unless whole numbers, at least one, at most ``maximum``."""
    if width < 1 or len(data) % width:
        raise WireFormatError("the numbers are not a whole multiple of their fixed width")
    count = len(data) // width
    if not 1 <= count <= maximum:
        raise WireFormatError(f"a chunk must hold 1 to {maximum} numbers")
    view = memoryview(data)
    return [int.from_bytes(view[k : k + width], "big") for k in range(0, len(data), width)]


def check_pool_request(key: PublicKey, count: int, window_bits: int) -> None:
    """A pool request within the caps: 1..MAX_CHUNK_ITEMS elements, a window whose table fits MAX_TABLE_BYTES."""
    if not 1 <= count <= MAX_CHUNK_ITEMS:
        raise WireFormatError(f"a pool request must ask for 1 to {MAX_CHUNK_ITEMS} elements")
    if window_bits:
        if window_bits > MAX_WINDOW_BITS:
            raise WireFormatError(f"the window must be at most {MAX_WINDOW_BITS} bits")
        windows = -(-key.exponent_bits // window_bits)
        if windows * ((1 << window_bits) - 1) * key.ciphertext_bytes > MAX_TABLE_BYTES:
            raise WireFormatError("the window's table would exceed the worker's memory cap")


def private_key_parts(key: PrivateKey) -> tuple[bytes, bytes, bytes, bytes]:
    """p, q, a_p, a_q big-endian, minimal length."""
    return tuple(v.to_bytes((v.bit_length() + 7) // 8, "big") for v in (key.p, key.q, key.a_p, key.a_q))  # type: ignore[return-value]


def private_key_from_parts(public: PublicKey, p: bytes, q: bytes, a_p: bytes, a_q: bytes) -> PrivateKey:
    """Rebuild a private key; every part at most half of N's width (+1 byte) before it becomes a number."""
    limit = plaintext_bytes(public) // 2 + 1
    if any(not 0 < len(part) <= limit for part in (p, q, a_p, a_q)):
        raise WireFormatError("a part of the private key has the wrong length")
    try:
        return PrivateKey(public, *(int.from_bytes(part, "big") for part in (p, q, a_p, a_q)))
    except SpecError as exc:
        raise WireFormatError(f"the private key does not match its public key ({exc})") from None
