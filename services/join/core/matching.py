"""The helper's matching of the two owners' tags, and the minimum-intersection rule.

Maths. Owner A uploads tags t_A[i] = HMAC(K, id_A[i]), owner B uploads
t_B[j] = HMAC(K, id_B[j]); the helper pairs (i, j) with t_A[i] = t_B[j].
HMAC-SHA256 collisions are negligible, so equal tags mean equal IDs.

Leakage (by design): the helper learns both set sizes, the intersection size
and which (pseudonymous, per-run) tags matched, never the IDs or the key.
A run stops when fewer than the study's minimum patients match; the error
deliberately does not carry the actual size, since a small count about
identifiable patients is what the minimum protects.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.join.core.errors import DuplicateTagError, IntersectionTooSmallError, WireFormatError
from services.join.core.keys import TAG_BYTES


def _index(tags: Sequence[bytes], owner: str) -> dict[bytes, int]:
    index: dict[bytes, int] = {}
    for i, t in enumerate(tags):
        if len(t) != TAG_BYTES:
            raise WireFormatError(f"owner {owner}: a tag does not have {TAG_BYTES} bytes")
        if index.setdefault(t, i) != i:
            raise DuplicateTagError(f"owner {owner}: the upload holds a tag twice")
    return index


def match_tags(tags_a: Sequence[bytes], tags_b: Sequence[bytes]) -> list[tuple[int, int]]:
    """Pairs (i, j) of upload positions with equal tags, in the order of A's upload."""
    _index(tags_a, "A")  # validates A's tags as well
    index_b = _index(tags_b, "B")
    return [(i, index_b[t]) for i, t in enumerate(tags_a) if t in index_b]


def check_minimum(joined: int, minimum: int) -> None:
    """Raise IntersectionTooSmallError if joined < max(minimum, 1); an empty join never runs."""
    floor = max(minimum, 1)
    if joined < floor:
        raise IntersectionTooSmallError(floor)
