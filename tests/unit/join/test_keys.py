"""Tag key agreement (X25519 + HKDF) and HMAC tags."""

from __future__ import annotations

import pytest

from services.join.core.errors import WireFormatError
from services.join.core.keys import (
    TAG_BYTES,
    TagKey,
    derive_tag_key,
    new_agreement_key,
    public_key_bytes,
    tag,
    tag_key_info,
    tags,
)


def test_both_owners_derive_the_same_key() -> None:
    a, b = new_agreement_key(), new_agreement_key()
    info = tag_key_info("study-1", "run-1")
    key_a = derive_tag_key(a, public_key_bytes(b), info)
    key_b = derive_tag_key(b, public_key_bytes(a), info)
    assert key_a == key_b
    assert tag(key_a, "1970-01-31|1234AB") == tag(key_b, "1970-01-31|1234AB")


def test_key_depends_on_info_and_peer() -> None:
    a, b, c = new_agreement_key(), new_agreement_key(), new_agreement_key()
    base = derive_tag_key(a, public_key_bytes(b), tag_key_info("s", "r1"))
    assert base != derive_tag_key(a, public_key_bytes(b), tag_key_info("s", "r2"))
    assert base != derive_tag_key(a, public_key_bytes(c), tag_key_info("s", "r1"))


def test_info_is_unambiguous() -> None:
    assert tag_key_info("a", "bc") != tag_key_info("ab", "c")


def test_tags() -> None:
    key = TagKey(bytes(range(32)))
    t = tag(key, "1970-01-31|1234AB")
    assert len(t) == TAG_BYTES
    assert t == tag(key, "1970-01-31|1234AB") != tag(key, "1970-01-31|1234AC")
    assert tags(key, ["x", "y"]) == [tag(key, "x"), tag(key, "y")]


def test_tag_key_repr_hides_secret() -> None:
    key = TagKey(b"\xab" * 32)
    assert "ab" not in repr(key).lower().replace("tagkey", "")
    with pytest.raises(ValueError):
        TagKey(b"short")


@pytest.mark.parametrize("peer", [b"\x00" * 31, b"\x00" * 32, (1).to_bytes(32, "little")])
def test_bad_peer_keys(peer: bytes) -> None:
    with pytest.raises(WireFormatError):
        derive_tag_key(new_agreement_key(), peer, b"info")


def test_own_key_as_peer_is_rejected() -> None:
    a = new_agreement_key()
    with pytest.raises(WireFormatError):
        derive_tag_key(a, public_key_bytes(a), b"info")
