"""The leak scanner: which byte strings of patient data must never appear, and a fast
search for all of them at once in files, messages and recorded wire traffic.

Needles (built from data the test wrote itself, so it knows every ID and value):

- IDs: each birth date and postal code as written in the CSV, the canonical
  "YYYY-MM-DD|POSTAL" form and its two parts, postal codes in upper and lower case,
  with and without the space;
- tags: HMAC-SHA256(K, canonical id) for every tag key K the owners derived (the test
  captures the keys inside the encryption servers), raw, hex and base64;
- values: each attribute value as written in the CSV ("%.6f") and as Python's float
  repr, without the sign (so "-1.5" is found through "1.5"), as IEEE-754 doubles and as
  the join's fixed-point encoding round(x·2^32) + 2^63 (8 bytes, both byte orders);
- tag keys: each K, raw and hex.

Decimal forms shorter than 7 characters are left out: they occur by chance in any text
(timestamps, counts). A decimal form counts only as a whole number (no digit or '.'
before it, no digit after it: "1.847332" inside "01.847332" is another number, and so is
"0.030095" inside a metric's duration 0.030095037 s), and
clock times (hh:mm:ss.ffffff, hh:mm:ss,fff in logs, spans and audit rows) are blanked
before the search, since their seconds look like six-decimal values. A postal code
alone counts only as a whole word (no ASCII letter or digit touching it): "4011 ro" in
"…-c05c74d14011 root" is a run id and a logger's name, "6864in" in a SQLite record a
digest and the next column's "insurer", and "1234 ms" would be a count and a unit.
(SQLite records abut their columns: the suite scans each table's cells decoded too.)
Birth dates, the canonical form and every other needle are searched as they are. The
data the suite uses has distinctive values (six decimals, continuous), and postal codes
with letters outside A–F, so that no hex digest can contain one by chance.

Search: for each needle length class, every window of the blob is packed into a
uint64 (its first min(len, 8) bytes) with numpy and looked up in the needles' prefixes
(`np.isin`), then each candidate is compared in full. Blobs are cut into overlapping
pieces to bound memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_DECIMAL_CHARS = 7
CLOCK_TIME = re.compile(rb"\d{2}:\d{2}:\d{2}[.,]\d+")
DIGITS = frozenset(b"0123456789")
PIECE_BYTES = 8 * 1024 * 1024
FRACTIONAL_BITS = 32
OFFSET = 1 << 63


@dataclass(frozen=True)
class Needle:
    """A byte string that must not occur, and what it is (for the report)."""

    kind: str  # "id", "tag", "value" or "tag key"
    data: bytes
    whole_number: bool = False  # a decimal form: found only where it is not part of a longer number
    whole_word: bool = False  # a postal code: found only where no letter or digit touches it


@dataclass(frozen=True)
class Finding:
    where: str
    offset: int
    needle: Needle

    def describe(self) -> str:
        return f"{self.needle.kind} at {self.where}:{self.offset}"


@dataclass(frozen=True)
class PatientId:
    """One patient's ID as an owner's CSV writes it, and its canonical form."""

    birth_date: str
    postal_code: str
    canonical: str  # "YYYY-MM-DD|POSTAL"


def id_forms(patient: PatientId) -> set[str]:
    iso = patient.canonical.split("|")[0]
    year, month, day = iso.split("-")
    return {
        patient.birth_date,
        patient.canonical,
        iso,
        *postal_forms(patient),
        f"{day}-{month}-{year}",
        f"{day}/{month}/{year}",
    }


def postal_forms(patient: PatientId) -> set[str]:
    """The postal code alone, as written and canonical, in both cases, with and without the space."""
    code = patient.canonical.split("|")[1]
    spaced = f"{code[:4]} {code[4:]}"
    return {patient.postal_code, code, code.lower(), spaced, spaced.lower()}


def id_needles(patients: Iterable[PatientId]) -> list[Needle]:
    forms: set[str] = set()
    postal: set[str] = set()
    for patient in patients:
        forms |= id_forms(patient)
        postal |= postal_forms(patient)
    return [Needle("id", f.encode(), whole_word=f in postal) for f in sorted(forms)]


def tag_needles(canonical_ids: Iterable[str], tag_keys: Iterable[bytes]) -> list[Needle]:
    out: list[Needle] = []
    ids = sorted(set(canonical_ids))
    for key in tag_keys:
        for cid in ids:
            tag = hmac.digest(key, cid.encode(), hashlib.sha256)
            out += [
                Needle("tag", tag),
                Needle("tag", tag.hex().encode()),
                Needle("tag", base64.b64encode(tag)),
                Needle("tag", base64.urlsafe_b64encode(tag)),
            ]
    return out


def tag_key_needles(tag_keys: Iterable[bytes]) -> list[Needle]:
    out: list[Needle] = []
    for key in tag_keys:
        out += [Needle("tag key", key), Needle("tag key", key.hex().encode()), Needle("tag key", base64.b64encode(key))]
    return out


def value_texts(written: str) -> set[str]:
    """The decimal forms of one CSV cell worth searching for (sign dropped, long enough)."""
    forms = {written.lstrip("+-"), repr(float(written)).lstrip("+-")}
    return {f for f in forms if len(f) >= MIN_DECIMAL_CHARS}


def value_bytes(x: float) -> set[bytes]:
    encoded = (int(np.rint(x * 2.0**FRACTIONAL_BITS)) + OFFSET) % (1 << 64)
    return {struct.pack("<d", x), struct.pack(">d", x), encoded.to_bytes(8, "little"), encoded.to_bytes(8, "big")}


def value_text_needles(cells: Iterable[str]) -> list[Needle]:
    """Needles of attribute values' decimal forms only (found only as whole numbers)."""
    texts = {t for cell in cells for t in value_texts(cell)}
    return [Needle("value", t.encode(), whole_number=True) for t in sorted(texts)]


def value_needles(cells: Iterable[str]) -> list[Needle]:
    """Needles of attribute values, from the cells exactly as the CSV holds them: decimal
    forms (`value_text_needles`) and binary encodings."""
    written = list(cells)
    binary = {b for cell in written for b in value_bytes(float(cell))}
    return value_text_needles(written) + [Needle("value", b) for b in sorted(binary)]


def _windows(arr: np.ndarray, width: int) -> np.ndarray:
    """uint64 of each window of `width` (≤ 8) bytes, little-endian packed."""
    n = len(arr) - width + 1
    out = np.zeros(max(n, 0), dtype=np.uint64)
    for j in range(width):
        out |= arr[j : j + n].astype(np.uint64) << np.uint64(8 * j)
    return out


def _whole(blob: bytes, at: int, length: int) -> bool:
    """The decimal at blob[at:at+length] is not part of a longer number."""
    before = blob[at - 1] if at > 0 else None
    after = blob[at + length] if at + length < len(blob) else None
    return (before is None or (before not in DIGITS and before != ord("."))) and (after is None or after not in DIGITS)


def _word(blob: bytes, at: int, length: int) -> bool:
    """blob[at:at+length] is not part of a longer word: no ASCII letter or digit right before or after it."""
    before = blob[at - 1 : at] if at > 0 else b""
    after = blob[at + length : at + length + 1]
    return not before.isalnum() and not after.isalnum()


def _stands_alone(blob: bytes, at: int, needle: Needle) -> bool:
    if needle.whole_number and not _whole(blob, at, len(needle.data)):
        return False
    return not needle.whole_word or _word(blob, at, len(needle.data))


class Scanner:
    """Finds every occurrence of any needle (see the module docstring)."""

    def __init__(self, needles: Sequence[Needle]) -> None:
        if not needles:
            raise ValueError("a scanner needs needles")
        self.needles = list({n.data: n for n in needles}.values())
        if min(len(n.data) for n in self.needles) < 4:
            raise ValueError("needles shorter than 4 bytes would match by chance")
        self.max_len = max(len(n.data) for n in self.needles)
        # width → prefix key → needles with that prefix
        self._by_width: dict[int, dict[int, list[Needle]]] = defaultdict(lambda: defaultdict(list))
        for needle in self.needles:
            width = min(len(needle.data), 8)
            self._by_width[width][int.from_bytes(needle.data[:width], "little")].append(needle)
        self._keys = {w: np.array(sorted(keys), dtype=np.uint64) for w, keys in self._by_width.items()}

    def scan_bytes(self, blob: bytes, where: str) -> list[Finding]:
        blob = CLOCK_TIME.sub(lambda m: b"#" * len(m.group()), blob)  # same length: offsets stay
        found: dict[tuple[int, bytes], Finding] = {}
        step = PIECE_BYTES
        for start in range(0, max(len(blob), 1), step):
            piece = blob[start : start + step + self.max_len - 1]
            arr = np.frombuffer(piece, dtype=np.uint8)
            for width, keys in self._keys.items():
                if len(arr) < width:
                    continue
                hits = np.nonzero(np.isin(_windows(arr, width), keys))[0]
                for i in hits.tolist():
                    key = int.from_bytes(piece[i : i + width], "little")
                    for needle in self._by_width[width][key]:
                        if piece[i : i + len(needle.data)] == needle.data and _stands_alone(blob, start + i, needle):
                            found[(start + i, needle.data)] = Finding(where, start + i, needle)
        return sorted(found.values(), key=lambda f: (f.offset, f.needle.data))

    def scan_files(self, paths: Iterable[Path]) -> list[Finding]:
        out: list[Finding] = []
        for path in paths:
            out += self.scan_bytes(Path(path).read_bytes(), str(path))
        return out

    def scan_texts(self, texts: Iterable[tuple[str, str]]) -> list[Finding]:
        """(where, text) pairs, e.g. error messages."""
        out: list[Finding] = []
        for where, text in texts:
            out += self.scan_bytes(text.encode("utf-8", "surrogateescape"), where)
        return out
