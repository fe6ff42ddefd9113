"""An owner's commitment to its input of one run: a hiding fingerprint of the rows it joins.

    rows_i       = canonical_id_i ‖ TAB ‖ float.hex(value_i1) ‖ TAB ‖ … (features, then the target)
    commitment   = HMAC-SHA256( key, DOMAIN ‖ columns ‖ sorted(rows_i) joined by NL )   (hex)

`key` is the owner's own secret for the study (32 random bytes, kept by its gateway,
never sent anywhere but its own encryption server), so the commitment reveals nothing
about the rows to anyone else (HMAC is a PRF), yet two runs on the same rows give the
same commitment and different rows (one patient more or less, one value changed) a
different one. Canonical means: IDs as the join normalises them, values exactly as
parsed (`float.hex`), rows sorted — the file's order, date and postal code spellings,
delimiter and number formatting do not change it. Nothing of the input is kept.
"""

from __future__ import annotations

import hashlib
import hmac

from services.join.core.csvinput import OwnerTable
from services.join.core.errors import SpecError

DOMAIN = b"riskmesh input commitment v1\n"
KEY_BYTES = 32


def canonical_rows(table: OwnerTable) -> list[bytes]:
    """One line per row: canonical ID, then every value in hexadecimal float notation, sorted."""
    lines = [
        "\t".join([cid, *(float(v).hex() for v in row)]).encode("utf-8")
        for cid, row in zip(table.ids, table.values.tolist(), strict=True)
    ]
    lines.sort()
    return lines


def input_commitment(table: OwnerTable, key: bytes) -> str:
    """HMAC-SHA256 (hex) of the owner's canonicalised rows under its per-study secret `key`."""
    if len(key) != KEY_BYTES:
        raise SpecError(f"the commitment key must be {KEY_BYTES} bytes")
    mac = hmac.new(key, DOMAIN, hashlib.sha256)
    mac.update("\t".join(c.name for c in table.columns).encode("utf-8") + b"\n")
    for line in canonical_rows(table):
        mac.update(line + b"\n")
    return mac.hexdigest()
