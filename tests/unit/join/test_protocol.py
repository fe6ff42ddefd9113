"""The whole join in memory: CSVs → tags/ciphertexts → match + mask → resharing → shares that
sum to exactly the encoded plaintext inner join (in the helper's secret order)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pytest

from services.join.core import fixedpoint
from services.join.core.columns import ColumnSpec
from services.join.core.csvinput import OwnerTable, read_owner_csv
from services.join.core.errors import IntersectionTooSmallError, SpecError, WireFormatError
from services.join.core.keys import TagKey, derive_tag_key, new_agreement_key, public_key_bytes, tag_key_info
from services.join.core.packing import SlotLayout
from services.join.core.paillier import PrivateKey, generate_keypair, generate_pool
from services.join.core.protocol import (
    EncryptedUpload,
    HelperResult,
    helper_match_and_mask,
    owner_encrypt,
    owner_reshare,
    pool_size,
)
from services.join.core.shares import ShareMatrix, assemble, reconstruct

COLS_A = [ColumnSpec("pid_a", 0, 10_000), ColumnSpec("days", 0, 365), ColumnSpec("cost", -1e5, 1e5)]
COLS_B = [
    ColumnSpec("pid_b", 0, 10_000),
    ColumnSpec("bmi", 10, 60),
    ColumnSpec("smoker", 0, 1),
    ColumnSpec("exercise", 0, 40),
    ColumnSpec("age", 0, 120),
]


def _patient(i: int) -> tuple[str, str]:
    date = dt.date(1940, 1, 1) + dt.timedelta(days=37 * i)
    return date.strftime("%d-%m-%Y"), f"{1000 + i % 97}{chr(65 + i % 26)}{chr(65 + i // 26 % 26)}"


def _owner_csv(path: Path, patients: list[int], cols: list[ColumnSpec], rng: random.Random) -> OwnerTable:
    lines = ["birth;postal;" + ";".join(c.name for c in cols)]
    for i in patients:
        dob, pc = _patient(i)
        values = [str(i)] + [repr(round(rng.uniform(c.min, c.max), 6)) for c in cols[1:]]
        lines.append(f"{dob};{pc};" + ";".join(values))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_owner_csv(
        path, birth_date_column="birth", postal_code_column="postal", features=cols[:-1], target=cols[-1]
    )


def _tag_keys() -> tuple[TagKey, TagKey]:
    a, b = new_agreement_key(), new_agreement_key()
    info = tag_key_info("study-x", "run-1")
    return derive_tag_key(a, public_key_bytes(b), info), derive_tag_key(b, public_key_bytes(a), info)


Run = tuple[EncryptedUpload, EncryptedUpload, HelperResult, list[ShareMatrix]]


def _run(table_a: OwnerTable, table_b: OwnerTable, key_a: PrivateKey, key_b: PrivateKey, minimum: int) -> Run:
    tag_a, tag_b = _tag_keys()
    upload_a = owner_encrypt(
        table_a, tag_a, key_b.public, generate_pool(key_b.public, pool_size(table_a, key_b.public))
    )
    upload_b = owner_encrypt(
        table_b, tag_b, key_a.public, generate_pool(key_a.public, pool_size(table_b, key_a.public))
    )
    helper = helper_match_and_mask(upload_a, upload_b, minimum)
    shares_a = owner_reshare(helper.to_a, key_a, threads=2)  # A holds x' + r of B's columns
    shares_b = owner_reshare(helper.to_b, key_b)
    columns = (*upload_a.columns, *upload_b.columns)
    n = helper.joined
    full = [
        assemble(columns, [shares_a], n),
        assemble(columns, [shares_b], n),
        assemble(columns, [helper.shares_of_a_columns, helper.shares_of_b_columns], n),
    ]
    return upload_a, upload_b, helper, full


def _sorted_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.lexsort(matrix.T[::-1])]


def test_full_join_reconstructs_the_plaintext_inner_join(tmp_path: Path, key_a: PrivateKey, key_b: PrivateKey) -> None:
    rng = random.Random(7)
    patients = list(range(300))
    rng.shuffle(patients)
    only_a, both, only_b = patients[:100], patients[100:200], patients[200:]
    table_a = _owner_csv(tmp_path / "a.csv", only_a + both, COLS_A, rng)
    table_b = _owner_csv(tmp_path / "b.csv", both[::-1] + only_b, COLS_B, rng)

    upload_a, upload_b, helper, full = _run(table_a, table_b, key_a, key_b, minimum=50)
    assert helper.joined == 100
    assert upload_a.layout.ciphertexts_per_row == 1 and upload_b.layout.ciphertexts_per_row == 2  # 1024 bits
    # The owners' matrices are zero on their own columns; H's masks are everywhere else.
    assert all(v == 0 for row in full[0].values for v in row[:3])
    assert all(v == 0 for row in full[1].values for v in row[3:])

    encoded = np.array(reconstruct(full).values, dtype=object)
    assert encoded.min() >= 0 and encoded.max() < 2**64  # exactly x', no mask left over
    joined = fixedpoint.decode(encoded.astype(np.uint64))
    assert np.array_equal(joined[:, 0], joined[:, 3])  # A's and B's halves of a row are one patient

    pid_row_a = {int(v): k for k, v in enumerate(table_a.values[:, 0])}
    pid_row_b = {int(v): k for k, v in enumerate(table_b.values[:, 0])}
    expected = np.array([np.concatenate([table_a.values[pid_row_a[i]], table_b.values[pid_row_b[i]]]) for i in both])
    rounded = np.rint(expected * 2.0**32) / 2.0**32
    assert np.array_equal(_sorted_rows(joined), _sorted_rows(rounded))  # undoes π


def test_helper_order_is_permuted(tmp_path: Path, key_a: PrivateKey, key_b: PrivateKey) -> None:
    rng = random.Random(3)
    table_a = _owner_csv(tmp_path / "a.csv", list(range(60)), COLS_A, rng)
    table_b = _owner_csv(tmp_path / "b.csv", list(range(60)), COLS_B, rng)
    *_, full = _run(table_a, table_b, key_a, key_b, minimum=1)
    pids = fixedpoint.decode(np.array(reconstruct(full).values, dtype=object).astype(np.uint64))[:, 0]
    assert sorted(pids) == list(range(60)) and list(pids) != list(range(60))


def test_intersection_below_minimum(tmp_path: Path, key_a: PrivateKey, key_b: PrivateKey) -> None:
    rng = random.Random(5)
    table_a = _owner_csv(tmp_path / "a.csv", list(range(0, 30)), COLS_A, rng)
    table_b = _owner_csv(tmp_path / "b.csv", list(range(25, 50)), COLS_B, rng)
    with pytest.raises(IntersectionTooSmallError) as info:
        _run(table_a, table_b, key_a, key_b, minimum=6)
    assert "5" not in str(info.value)  # the actual size is not disclosed
    _run(table_a, table_b, key_a, key_b, minimum=5)
    table_c = _owner_csv(tmp_path / "c.csv", list(range(100, 110)), COLS_B, rng)
    with pytest.raises(IntersectionTooSmallError):
        _run(table_a, table_c, key_a, key_b, minimum=0)


def test_protocol_guards(tmp_path: Path, key_a: PrivateKey, key_b: PrivateKey) -> None:
    rng = random.Random(9)
    table_a = _owner_csv(tmp_path / "a.csv", list(range(10)), COLS_A, rng)
    table_b = _owner_csv(tmp_path / "b.csv", list(range(10)), COLS_B, rng)
    tag_a, tag_b = _tag_keys()
    up_a = owner_encrypt(table_a, tag_a, key_b.public, generate_pool(key_b.public, 10))
    up_b_same_key = owner_encrypt(table_b, tag_b, key_b.public, generate_pool(key_b.public, 20))
    with pytest.raises(SpecError):
        helper_match_and_mask(up_a, up_b_same_key, 1)
    up_b = owner_encrypt(table_b, tag_b, key_a.public, generate_pool(key_a.public, 20))
    truncated = EncryptedUpload(up_b.tags[:-1], up_b.ciphertexts, up_b.columns, up_b.layout, up_b.key)
    with pytest.raises(WireFormatError):
        helper_match_and_mask(up_a, truncated, 1)
    other_sigma = SlotLayout.for_columns(5, 1024, sigma_bits=41)
    up_b_sigma = owner_encrypt(table_b, tag_b, key_a.public, generate_pool(key_a.public, 20), other_sigma)
    with pytest.raises(SpecError):
        helper_match_and_mask(up_a, up_b_sigma, 1)
    helper = helper_match_and_mask(up_a, up_b, 1)
    with pytest.raises(WireFormatError):
        owner_reshare(helper.to_a, key_b)  # B's key cannot open rows meant for A
    assert "ciphertexts" not in repr(up_a) and "rows=10" in repr(up_a)


def test_full_join_at_2048_bits(tmp_path: Path) -> None:
    rng = random.Random(11)
    key_a, key_b = generate_keypair(2048), generate_keypair(2048)
    table_a = _owner_csv(tmp_path / "a.csv", list(range(0, 16)), COLS_A, rng)
    table_b = _owner_csv(tmp_path / "b.csv", list(range(8, 24)), COLS_B, rng)
    upload_a, upload_b, helper, full = _run(table_a, table_b, key_a, key_b, minimum=8)
    assert upload_b.layout.ciphertexts_per_row == 1 and upload_b.layout.slots_per_ciphertext == 5
    assert helper.joined == 8
    joined = fixedpoint.decode(np.array(reconstruct(full).values, dtype=object).astype(np.uint64))
    assert sorted(joined[:, 0]) == sorted(joined[:, 3]) == list(range(8, 16))
