"""The secure inner join in memory: the data flow the gRPC services follow.

Parties: owners A and B (each with a Paillier key pair and the shared tag
key K), helper H (no key, no data). Semi-honest, non-colluding.

1. ``owner_encrypt`` (at A, likewise at B): tags HMAC(K, id); values encoded
   x' = round(x·2^f) + 2^(ℓ−1), packed, encrypted under the **other** owner's
   key with fresh pool randomness; rows shuffled (so H does not see the
   file's order). → ``EncryptedUpload`` streamed to H. The encryption server
   does the same piece by piece (``encrypt_piece`` over consecutive slices of
   one shuffled order), so it never holds the whole upload.
2. ``helper_match_and_mask`` (at H): match tags; stop below the study's
   minimum (``IntersectionTooSmallError``); draw π; for each matched pair, in
   π order, mask A's ciphertexts (under B's key) and B's ciphertexts (under
   A's key) with fresh r, keep −r. → A's masked rows go to B, B's to A;
   H keeps its two ``ShareMatrix`` blocks.
3. ``owner_reshare`` (at A and B): decrypt the delivery → x' + r for the other
   owner's columns, row k of both deliveries being the same patient.

Then each party ``shares.assemble``s its full matrix over all study columns;
the three matrices sum to the encoded joined table in π order.

Leakage: A and B learn the intersection size; H learns both set sizes, the
intersection size and which per-run tags matched. Nobody else learns IDs,
K (never at H) or another party's values (ciphertexts under a key they do not
hold, or values masked with 2^−σ statistical distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.join.core import fixedpoint
from services.join.core.csvinput import OwnerTable
from services.join.core.errors import SpecError, WireFormatError
from services.join.core.keys import TagKey, tags
from services.join.core.masking import mask_rows, permute, random_permutation
from services.join.core.matching import check_minimum, match_tags
from services.join.core.packing import SlotLayout, pack_rows
from services.join.core.paillier import PrivateKey, PublicKey, RandomnessPool, encrypt_rows
from services.join.core.shares import ShareMatrix, owner_shares


@dataclass(frozen=True)
class EncryptedUpload:
    """One owner's upload to H: tags and ciphertexts (same shuffled order), under the other owner's key."""

    tags: list[bytes]
    ciphertexts: list[list[int]]
    columns: tuple[str, ...]
    layout: SlotLayout
    key: PublicKey

    def __repr__(self) -> str:
        return f"EncryptedUpload(rows={len(self.tags)}, columns={self.columns!r}, key_id={self.key.key_id!r})"


@dataclass(frozen=True)
class MaskedDelivery:
    """Masked rows H sends to one owner, encrypted under that owner's key, in π order."""

    ciphertexts: list[list[int]]
    columns: tuple[str, ...]
    layout: SlotLayout
    key_id: str

    def __repr__(self) -> str:
        return f"MaskedDelivery(rows={len(self.ciphertexts)}, columns={self.columns!r}, key_id={self.key_id!r})"


@dataclass(frozen=True)
class HelperResult:
    """H's outputs: the two deliveries and its own shares (−r) of A's and of B's columns."""

    joined: int
    to_a: MaskedDelivery
    to_b: MaskedDelivery
    shares_of_a_columns: ShareMatrix
    shares_of_b_columns: ShareMatrix


def pool_size(table: OwnerTable, peer_key: PublicKey) -> int:
    """Pool elements an owner needs: rows × ciphertexts per row."""
    layout = SlotLayout.for_columns(len(table.columns), peer_key.bits)
    return len(table.ids) * layout.ciphertexts_per_row


def prepare_layout(columns: int, peer_key: PublicKey, layout: SlotLayout | None = None) -> SlotLayout:
    """The layout of rows of ``columns`` values under ``peer_key`` (checked against both)."""
    if layout is None:
        layout = SlotLayout.for_columns(columns, peer_key.bits)
    layout.check_columns(columns)
    layout.check_modulus(peer_key.bits)
    return layout


def encrypt_piece(
    table: OwnerTable,
    tag_key: TagKey,
    peer_key: PublicKey,
    layout: SlotLayout,
    rows: Sequence[int],
    pool: RandomnessPool,
) -> tuple[list[bytes], list[list[int]]]:
    """Step 1 for the table rows ``rows``, in that order: their tags and ciphertexts."""
    index = np.asarray(rows, dtype=np.int64)
    encoded = fixedpoint.encode(
        table.values[index], table.columns, layout.fixed_point, [table.row_numbers[i] for i in rows]
    )
    row_tags = tags(tag_key, (table.ids[i] for i in rows))
    return row_tags, encrypt_rows(peer_key, pack_rows(layout, encoded), pool)


def owner_encrypt(
    table: OwnerTable,
    tag_key: TagKey,
    peer_key: PublicKey,
    pool: RandomnessPool,
    layout: SlotLayout | None = None,
) -> EncryptedUpload:
    """Step 1 at one owner: tag, encode, pack, encrypt under ``peer_key``, shuffle."""
    layout = prepare_layout(len(table.columns), peer_key, layout)
    order = random_permutation(len(table.ids))  # hide the file's row order from H
    row_tags, ciphertexts = encrypt_piece(table, tag_key, peer_key, layout, order, pool)
    return EncryptedUpload(row_tags, ciphertexts, tuple(c.name for c in table.columns), layout, peer_key)


class UploadShape(Protocol):
    """What H checks of an upload besides its rows (an EncryptedUpload, or a spooled one)."""

    @property
    def columns(self) -> tuple[str, ...]: ...
    @property
    def layout(self) -> SlotLayout: ...
    @property
    def key(self) -> PublicKey: ...


def check_upload(upload: EncryptedUpload) -> None:
    """H's structural checks of one upload (sizes, layout against the key)."""
    upload.layout.check_columns(len(upload.columns))
    upload.layout.check_modulus(upload.key.bits)
    if len(upload.tags) != len(upload.ciphertexts):
        raise WireFormatError("an upload has different numbers of tags and rows")


def check_compatible(upload_a: UploadShape, upload_b: UploadShape) -> None:
    """H's checks across the two uploads: other keys, disjoint columns, one fixed-point format."""
    if upload_a.key == upload_b.key:
        raise SpecError("both owners encrypted under the same key; each must use the other's")
    if set(upload_a.columns) & set(upload_b.columns):
        raise SpecError("the two owners name the same column")
    fmt_a, fmt_b = upload_a.layout, upload_b.layout
    if (fmt_a.fractional_bits, fmt_a.value_bits, fmt_a.sigma_bits) != (
        fmt_b.fractional_bits,
        fmt_b.value_bits,
        fmt_b.sigma_bits,
    ):
        raise SpecError("the two uploads use different fixed-point or masking parameters")


def helper_match_and_mask(upload_a: EncryptedUpload, upload_b: EncryptedUpload, min_intersection: int) -> HelperResult:
    """Step 2 at H: match, enforce the minimum, permute, mask, split into deliveries and H's shares."""
    check_upload(upload_a)
    check_upload(upload_b)
    check_compatible(upload_a, upload_b)
    pairs = match_tags(upload_a.tags, upload_b.tags)
    check_minimum(len(pairs), min_intersection)
    pairs = permute(pairs, random_permutation(len(pairs)))
    masked_a = mask_rows(
        upload_a.key, upload_a.layout, [upload_a.ciphertexts[i] for i, _ in pairs], len(upload_a.columns)
    )
    masked_b = mask_rows(
        upload_b.key, upload_b.layout, [upload_b.ciphertexts[j] for _, j in pairs], len(upload_b.columns)
    )
    return HelperResult(
        joined=len(pairs),
        to_a=MaskedDelivery(masked_b.ciphertexts, upload_b.columns, upload_b.layout, upload_b.key.key_id),
        to_b=MaskedDelivery(masked_a.ciphertexts, upload_a.columns, upload_a.layout, upload_a.key.key_id),
        shares_of_a_columns=ShareMatrix(upload_a.columns, masked_a.helper_shares),
        shares_of_b_columns=ShareMatrix(upload_b.columns, masked_b.helper_shares),
    )


def owner_reshare(delivery: MaskedDelivery, key: PrivateKey, *, threads: int = 1) -> ShareMatrix:
    """Step 3 at one owner: decrypt the masked rows → x' + r for the other owner's columns."""
    if delivery.key_id != key.public.key_id:
        raise WireFormatError("masked rows are encrypted under another key")
    delivery.layout.check_modulus(key.public.bits)
    return owner_shares(key, delivery.layout, delivery.ciphertexts, delivery.columns, threads=threads)
