"""The helper's masking of matched ciphertexts, and the random permutation π.

Maths. For a matched row with packed ciphertext(s) c = Enc(Σ_i x'_i·2^(i·s)),
s = slot bits, the helper draws per slot a fresh uniform mask
r_i ∈ [0, 2^(ℓ+σ)) (``secrets``) and computes

    c' = c · (1 + R·N) mod N² = Enc(Σ_i (x'_i + r_i)·2^(i·s)),   R = Σ_i r_i·2^(i·s)

keeping −r_i as its own additive share. No slot overflows (see ``packing``),
so the owner that decrypts c' reads x'_i + r_i per slot, and
(x'_i + r_i) + (−r_i) = x'_i over the integers. Since x'_i < 2^ℓ, x'_i + r_i
is within statistical distance 2^−σ of uniform: the decrypting owner learns
nothing about x'_i.

The permutation π (uniform, from the OS CSPRNG via ``secrets.SystemRandom``)
reorders the matched pairs before anything leaves the helper, so neither
owner can link a joined row to a position in its own upload.

Re-randomisation is not needed (docs/design.md, Step 2): the decrypting owner
could recover the sender's encryption randomness, but that is independent of
data and membership. Masks are drawn per ciphertext and never reused.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.join.core.errors import WireFormatError
from services.join.core.packing import SlotLayout, pack_row
from services.join.core.paillier import PublicKey

T = TypeVar("T")


def random_permutation(n: int) -> list[int]:
    """A uniform permutation of range(n) (Fisher–Yates over the OS CSPRNG)."""
    order = list(range(n))
    secrets.SystemRandom().shuffle(order)
    return order


def permute(items: Sequence[T], permutation: Sequence[int]) -> list[T]:
    """out[k] = items[permutation[k]]."""
    if len(items) != len(permutation):
        raise ValueError("a permutation must have as many entries as items")
    return [items[k] for k in permutation]


def draw_masks(n_rows: int, n_columns: int, layout: SlotLayout) -> list[list[int]]:
    """Fresh uniform masks r ∈ [0, 2^(ℓ+σ)), one per (row, column)."""
    bits = layout.mask_bits
    return [[secrets.randbits(bits) for _ in range(n_columns)] for _ in range(n_rows)]


@dataclass(frozen=True)
class MaskedRows:
    """Masked ciphertexts (same row order as given) and the helper's shares −r."""

    ciphertexts: list[list[int]]
    helper_shares: list[list[int]]

    def __repr__(self) -> str:  # never print shares
        return f"MaskedRows(rows={len(self.ciphertexts)})"


def mask_rows(
    public_key: PublicKey, layout: SlotLayout, ciphertexts: Sequence[Sequence[int]], n_columns: int
) -> MaskedRows:
    """Add packed fresh masks to every row's ciphertexts; return them with −r per value."""
    layout.check_columns(n_columns)
    masks = draw_masks(len(ciphertexts), n_columns, layout)
    n2 = public_key.n2
    masked: list[list[int]] = []
    for row, r in zip(ciphertexts, masks, strict=False):
        if len(row) != layout.ciphertexts_per_row:
            raise WireFormatError("a row has the wrong number of ciphertexts for its layout")
        out = []
        for c, packed_r in zip(row, pack_row(layout, r), strict=False):
            if not 0 < c < n2:
                raise WireFormatError("a ciphertext lies outside (0, N²)")
            out.append(public_key.add_plain(c, packed_r))
        masked.append(out)
    return MaskedRows(masked, [[-v for v in r] for r in masks])
