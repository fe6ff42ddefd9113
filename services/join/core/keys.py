"""Tag key agreement between the two data owners, and the keyed hash of an ID.

Maths. Each owner draws an ephemeral X25519 key pair (a, aG) / (b, bG) per run
and sends the public half to the other owner, gateway to gateway (never via
the helper). Both compute the shared point abG and derive

    K = HKDF-SHA256(ikm = X25519(a, bG), salt = none, info, length = 32)

with ``info`` naming the run (``tag_key_info(study_id, run_id)``), so every
run has a fresh key and tags of two runs cannot be linked. A row's tag is

    tag = HMAC-SHA256(K, canonical_id)         (32 bytes)

Security. The helper matches tags but never has K; since IDs have low
entropy, anyone holding K could brute-force tags back to IDs — hence the
non-collusion assumption between the helper and either owner. X25519 gives
no authentication by itself: the public keys must travel over the
authenticated (mTLS) gateway channel. ``cryptography`` rejects small-order
peer points (all-zero shared secret).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.join.core.errors import WireFormatError

KEY_BYTES = 32
TAG_BYTES = 32
PUBLIC_KEY_BYTES = 32
_INFO_PREFIX = b"riskmesh/v1 tag key"


@dataclass(frozen=True)
class TagKey:
    """The 32-byte HMAC key both owners share for one run; its repr never shows the key."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a tag key has {KEY_BYTES} bytes")


def new_agreement_key() -> X25519PrivateKey:
    """Draw a fresh ephemeral X25519 private key (one per run)."""
    return X25519PrivateKey.generate()


def public_key_bytes(private_key: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key, as sent in PrepareEncryptionResponse.x25519_public_key."""
    return private_key.public_key().public_bytes_raw()


def tag_key_info(study_id: str, run_id: str) -> bytes:
    """HKDF info binding the key to one study and run (unambiguous: lengths are prefixed)."""
    parts = [p.encode("utf-8") for p in (study_id, run_id)]
    return _INFO_PREFIX + b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def derive_tag_key(private_key: X25519PrivateKey, peer_public_key: bytes, info: bytes) -> TagKey:
    """X25519 with the peer's raw public key, then HKDF-SHA256(info) → the shared TagKey."""
    if len(peer_public_key) != PUBLIC_KEY_BYTES:
        raise WireFormatError(f"an X25519 public key has {PUBLIC_KEY_BYTES} bytes")
    if peer_public_key == public_key_bytes(private_key):
        raise WireFormatError("the peer's X25519 public key equals our own")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError:
        raise WireFormatError("the peer's X25519 public key is invalid (small-order point)") from None
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
    return TagKey(hkdf.derive(shared))


def tag(key: TagKey, canonical_id: str) -> bytes:
    """HMAC-SHA256(K, canonical id) — 32 bytes."""
    return hmac.digest(key.secret, canonical_id.encode("utf-8"), hashlib.sha256)


def tags(key: TagKey, canonical_ids: Iterable[str]) -> list[bytes]:
    """Tags of many IDs, in order."""
    secret = key.secret
    return [hmac.digest(secret, cid.encode("utf-8"), hashlib.sha256) for cid in canonical_ids]
