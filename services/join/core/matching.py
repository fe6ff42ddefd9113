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

import numpy as np

from services.join.core.errors import DuplicateTagError, IntersectionTooSmallError, WireFormatError
from services.join.core.keys import TAG_BYTES

TAG_DTYPE = np.dtype(f"V{TAG_BYTES}")  # raw bytes, compared and sorted as such


def tag_array(packed: bytes | bytearray | memoryview, owner: str) -> np.ndarray:
    """An upload's tags, concatenated (32 bytes each), as an array; refuses duplicates.

    Memory: the bytes themselves plus a sort's temporaries — no object per tag, so a
    million tags take 32 MB rather than ~100 MB of bytes objects and dict entries."""
    if len(packed) % TAG_BYTES:
        raise WireFormatError(f"owner {owner}: a tag does not have {TAG_BYTES} bytes")
    tags = np.frombuffer(bytes(packed), dtype=TAG_DTYPE)
    ordered = np.sort(tags)
    if len(ordered) > 1 and bool(np.any(ordered[1:] == ordered[:-1])):
        raise DuplicateTagError(f"owner {owner}: the upload holds a tag twice")
    return tags


def match_tag_arrays(tags_a: np.ndarray, tags_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j) with tags_a[i] = tags_b[j] (each side free of duplicates, see
    ``tag_array``), as two int64 arrays in the order of A's upload."""
    _, index_a, index_b = np.intersect1d(tags_a, tags_b, assume_unique=True, return_indices=True)
    order = np.argsort(index_a, kind="stable")
    return index_a[order].astype(np.int64), index_b[order].astype(np.int64)


def match_tags(tags_a: Sequence[bytes], tags_b: Sequence[bytes]) -> list[tuple[int, int]]:
    """Pairs (i, j) of upload positions with equal tags, in the order of A's upload."""
    arrays = []
    for tags, owner in ((tags_a, "A"), (tags_b, "B")):
        if any(len(t) != TAG_BYTES for t in tags):
            raise WireFormatError(f"owner {owner}: a tag does not have {TAG_BYTES} bytes")
        arrays.append(tag_array(b"".join(tags), owner))
    index_a, index_b = match_tag_arrays(*arrays)
    return list(zip(index_a.tolist(), index_b.tolist(), strict=True))


def check_minimum(joined: int, minimum: int) -> None:
    """Raise IntersectionTooSmallError if joined < max(minimum, 1); an empty join never runs."""
    floor = max(minimum, 1)
    if joined < floor:
        raise IntersectionTooSmallError(floor)
