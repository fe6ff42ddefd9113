"""Paillier (g = N+1, randomness from a small subgroup, fast decryption): keys, correctness,
masking, fast paths, pool discipline, wire format and its limits."""

from __future__ import annotations

import secrets

import gmpy2
import phe.paillier
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.join.core.errors import KeySizeError, PoolExhaustedError, SpecError, WireFormatError
from services.join.core.masking import mask_rows
from services.join.core.packing import SlotLayout, pack_rows, unpack_rows
from services.join.core.paillier import (
    MAX_MODULUS_BITS,
    MAX_TABLE_BYTES,
    FixedBaseTable,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    _structured_prime,
    check_key_size,
    choose_window_bits,
    decrypt_many,
    encrypt_rows,
    exponent_bits,
    generate_keypair,
    generate_pool,
    security_bits,
    subgroup_prime_bits,
)
from services.join.core.parallel import chunks, process_executor, split_sizes, stop_executor
from services.join.core.shares import owner_shares

EXAMPLES = settings(max_examples=40, deadline=None)


def _sums(owner: list[list[int]], helper: list[list[int]]) -> list[list[int]]:
    """(x' + r) + (−r) per value: the owner's and the helper's shares added up."""
    return [[o + h for o, h in zip(orow, hrow, strict=True)] for orow, hrow in zip(owner, helper, strict=True)]


def _encrypt(pk: PublicKey, m: int) -> int:
    return encrypt_rows(pk, [[m]], generate_pool(pk, 1))[0][0]


def test_security_sizes() -> None:
    assert [security_bits(b) for b in (1024, 2048, 3072, 4096, 7680, 8192)] == [80, 112, 128, 128, 192, 192]
    assert (subgroup_prime_bits(3072), exponent_bits(3072)) == (256, 512)
    assert (subgroup_prime_bits(2048), exponent_bits(2048)) == (224, 448)


def test_keygen_shape(key_a: PrivateKey) -> None:
    pk = key_a.public
    assert pk.bits == 1024 and pk.exponent_bits == 320
    assert key_a.p.bit_length() == key_a.q.bit_length() == 512
    assert key_a.p < key_a.q and gmpy2.is_prime(key_a.p) and gmpy2.is_prime(key_a.q)
    assert key_a.fast_plaintext_bits == 511
    for prime, a in ((key_a.p, key_a.a_p), (key_a.q, key_a.a_q)):
        assert gmpy2.is_prime(a) and a.bit_length() >= subgroup_prime_bits(1024)
        assert (prime - 1) % (2 * a) == 0 and gmpy2.is_prime((prime - 1) // (2 * a))
        # h_s lies in the subgroup of order 2·a modulo prime² (what decryption relies on) ...
        assert pow(pk.h_s, 2 * a, prime * prime) == 1
    # ... and is not of small order: its order modulo N² is a multiple of a_p·a_q.
    assert (
        pow(pk.h_s, 2, pk.n2) != 1 and pow(pk.h_s, 2 * key_a.a_p, pk.n2) != 1 and pow(pk.h_s, 2 * key_a.a_q, pk.n2) != 1
    )


def test_decryption_exponent_is_short(key_a: PrivateKey) -> None:
    # The point of the variant: c^(2·a_p) mod p² (2κ + 1 bits), not c^(p−1) (bits(N)/2 bits).
    assert key_a._at_p.exponent == 2 * key_a.a_p
    assert key_a._at_p.exponent.bit_length() <= subgroup_prime_bits(1024) + 2 < key_a.p.bit_length()


@pytest.mark.parametrize("bits, small", [(512, 160), (768, 224), (1536, 256)])
def test_structured_prime(bits: int, small: int) -> None:
    p, a, b = _structured_prime(bits, small)
    assert p == 2 * a * b + 1 and all(gmpy2.is_prime(x) for x in (p, a, b))
    assert 3 << (bits - 2) <= p < 1 << bits  # top two bits set: N = p·q has exactly 2·bits bits
    assert small <= a.bit_length() <= small + 1


def test_keygen_rejects_bad_sizes() -> None:
    for bits in (512, 1025, 16384):
        with pytest.raises(SpecError):
            generate_keypair(bits)


def test_encrypt_decrypt(key_a: PrivateKey) -> None:
    pk = key_a.public
    plain = [0, 1, 2**400 + 7, key_a.p - 1, pk.n - 1]
    pool = generate_pool(pk, len(plain))
    cts = [row[0] for row in encrypt_rows(pk, [[m] for m in plain], pool)]
    assert [key_a.decrypt(c) for c in cts] == plain
    assert decrypt_many(key_a, cts) == plain
    assert decrypt_many(key_a, cts, threads=2) == plain
    below = [m for m in plain if m < key_a.p]
    assert [key_a.decrypt_below_p(c) for c in cts[: len(below)]] == below
    assert decrypt_many(key_a, cts[: len(below)], below_p=True, threads=2) == below


@EXAMPLES
@given(m=st.integers(min_value=0))
def test_round_trip_any_plaintext(key_a: PrivateKey, m: int) -> None:
    m %= key_a.public.n
    assert key_a.decrypt(_encrypt(key_a.public, m)) == m


@EXAMPLES
@given(m=st.integers(min_value=0, max_value=2**511 - 1))
def test_round_trip_below_p(key_b: PrivateKey, m: int) -> None:
    c = _encrypt(key_b.public, m)
    assert key_b.decrypt_below_p(c) == m and decrypt_many(key_b, [c, c], below_p=True, threads=2) == [m, m]


@EXAMPLES
@given(m=st.integers(min_value=0), k=st.integers(min_value=0))
def test_masking_by_one_plus_k_n(key_a: PrivateKey, m: int, k: int) -> None:
    # The helper's mask: c·(1 + k·N) = Enc(m + k), the randomness untouched — still in the
    # small subgroup, so the short decryption exponent still removes it.
    pk = key_a.public
    m, k = m % pk.n, k % pk.n
    c = _encrypt(pk, m)
    assert key_a.decrypt(pk.add_plain(c, k)) == (m + k) % pk.n


@EXAMPLES
@given(m=st.integers(min_value=0, max_value=2**400), k=st.integers(min_value=0, max_value=2**104))
def test_masking_below_p(key_a: PrivateKey, m: int, k: int) -> None:
    pk = key_a.public
    assert key_a.decrypt_below_p(pk.add_plain(_encrypt(pk, m), k)) == m + k


@EXAMPLES
@given(rows=st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5), min_size=1, max_size=6))
def test_packed_rows_masked_and_reshared(key_b: PrivateKey, rows: list[list[int]]) -> None:
    # The whole owner → helper → owner path on packed slots: x' + r decrypts slot by slot,
    # and with the helper's −r it sums back to x'.
    layout = SlotLayout.for_columns(5, 1024)
    pk = key_b.public
    cts = encrypt_rows(pk, pack_rows(layout, rows), generate_pool(pk, len(rows) * layout.ciphertexts_per_row))
    masked = mask_rows(pk, layout, cts, 5)
    owner = owner_shares(key_b, layout, masked.ciphertexts, "abcde", threads=2)
    assert _sums(owner.values, masked.helper_shares) == rows
    plain = decrypt_many(key_b, [c for row in cts for c in row], below_p=True)
    per_row = layout.ciphertexts_per_row
    assert unpack_rows(layout, [plain[k : k + per_row] for k in range(0, len(plain), per_row)], 5) == rows


def test_matches_phe(key_a: PrivateKey) -> None:
    # An independent implementation (textbook decryption with λ) reads our ciphertexts:
    # the randomness h_s^r is an N-th residue, so this is ordinary Paillier with g = N + 1.
    m = secrets.randbits(1000)
    c = _encrypt(key_a.public, m)
    reference = phe.paillier.PaillierPrivateKey(phe.paillier.PaillierPublicKey(key_a.public.n), key_a.p, key_a.q)
    assert reference.raw_decrypt(c) == m


def test_same_plaintext_gives_different_ciphertexts(key_a: PrivateKey) -> None:
    assert _encrypt(key_a.public, 42) != _encrypt(key_a.public, 42)


def test_pool_elements_lie_in_the_subgroup(key_a: PrivateKey) -> None:
    # (1 + 0·N)·ρ decrypts to 0 iff ρ is an N-th residue; ρ^(2·a_p·a_q) = 1 iff ρ ∈ ⟨h_s⟩'s group.
    pk = key_a.public
    for rho in generate_pool(pk, 5).take(5):
        assert key_a.decrypt(rho) == 0 and rho != 1
        assert pow(rho, 2 * key_a.a_p * key_a.a_q, pk.n2) == 1


def test_pool_never_reuses(key_a: PrivateKey) -> None:
    pool = generate_pool(key_a.public, 20)
    seen = [pool.pop() for _ in range(10)] + pool.take(10)
    assert len(set(seen)) == 20 and len(pool) == 0
    with pytest.raises(PoolExhaustedError):
        pool.pop()
    with pytest.raises(PoolExhaustedError):
        pool.take(1)


def test_short_pool_fails_before_using_elements(key_a: PrivateKey) -> None:
    pool = generate_pool(key_a.public, 3)
    with pytest.raises(PoolExhaustedError):
        encrypt_rows(key_a.public, [[1], [2], [3], [4]], pool)
    assert len(pool) == 3


def test_pool_belongs_to_one_key(key_a: PrivateKey, key_b: PrivateKey) -> None:
    with pytest.raises(SpecError):
        encrypt_rows(key_a.public, [[1]], generate_pool(key_b.public, 1))
    assert "remaining=0" in repr(RandomnessPool("k", []))


def test_plaintext_must_be_below_n(key_a: PrivateKey) -> None:
    with pytest.raises(SpecError):
        encrypt_rows(key_a.public, [[key_a.public.n]], generate_pool(key_a.public, 1))


@pytest.mark.parametrize("window", [1, 3, 8])
def test_fixed_base_table(key_a: PrivateKey, window: int) -> None:
    n2 = int(key_a.public.n2)
    base = secrets.randbelow(n2)
    table = FixedBaseTable(base, n2, 64, window)
    for e in (0, 1, 2**64 - 1, secrets.randbits(64)):
        assert table.power(e) == pow(base, e, n2)
    with pytest.raises(SpecError):
        table.power(2**64)


def _table_bytes(window: int, exponent: int, modulus_bits: int) -> int:
    return -(-exponent // window) * ((1 << window) - 1) * ((modulus_bits + 7) // 8)


def test_window_choice() -> None:
    small, large = choose_window_bits(10, 448, 4096), choose_window_bits(10_000, 448, 4096)
    assert small < large == 10
    assert choose_window_bits(10_000, 448, 4096, max_table_bytes=8 << 20) == 8
    # 3072-bit keys. 5,000 elements per worker (10k rows, two workers): w = 10 would save 0.3 %
    # of the products for 19 MB more table, so w = 9 stays.
    assert choose_window_bits(5_000, 512, 6144) == 9
    # A million rows: w = 10 (41 MB) needs 9 % fewer products than w = 9; w = 11 (74 MB) is over the cap.
    big = choose_window_bits(500_000, 512, 6144)
    assert big == 10 and _table_bytes(big, 512, 6144) <= MAX_TABLE_BYTES < _table_bytes(big + 1, 512, 6144)


def test_pool_over_processes(key_a: PrivateKey) -> None:
    with process_executor(2) as executor:
        pool = generate_pool(key_a.public, 7, executor=executor, parts=2)
    elements = pool.take(7)
    assert len(set(elements)) == 7 and all(key_a.decrypt(rho) == 0 for rho in elements)


def test_stop_executor_ends_busy_workers_at_once() -> None:
    import concurrent.futures
    import time

    executor = process_executor(1)
    busy = executor.submit(time.sleep, 60)
    deadline = time.monotonic() + 30  # a loaded machine may take a while to start the worker
    while not (busy.running() and executor._processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = list(executor._processes.values())
    assert processes and busy.running()
    started = time.monotonic()
    stop_executor(executor)
    for process in processes:
        process.join(10)
        assert not process.is_alive()
    # The pool's management thread marks the future once it sees its worker gone.
    concurrent.futures.wait([busy], timeout=10)
    assert time.monotonic() - started < 20 and (busy.cancelled() or busy.done())


def test_split_helpers() -> None:
    assert split_sizes(5, 2) == [3, 2] and split_sizes(1, 4) == [1] and split_sizes(0, 3) == []
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 3)] == [[1, 2], [3, 4], [5]]


def test_public_key_serialisation(key_a: PrivateKey) -> None:
    pk = key_a.public
    n_data, h_data = pk.to_bytes(), pk.h_s_bytes()
    assert len(n_data) == 128 and int.from_bytes(n_data, "big") == pk.n
    assert len(h_data) == pk.ciphertext_bytes == 256 and int.from_bytes(h_data, "big") == pk.h_s
    assert PublicKey.from_bytes(n_data, h_data, pk.key_id) == pk
    assert PublicKey.from_bytes(b"\x00" + n_data, h_data).key_id == pk.key_id
    assert len(pk.key_id) == 32 and str(pk.h_s) not in repr(pk)
    with pytest.raises(WireFormatError):
        PublicKey.from_bytes(n_data, h_data, "0" * 32)
    # The key id covers h_s: the same modulus with another base is another key.
    other = PublicKey(pk.n, pk.h_s * pk.h_s % pk.n2)
    assert other.key_id != pk.key_id and other != pk


def test_public_key_parsing_limits(key_a: PrivateKey) -> None:
    pk = key_a.public
    n_data, h_data = pk.to_bytes(), pk.h_s_bytes()
    bad = [
        (n_data, h_data[1:]),  # h_s one byte short
        (n_data, b"\x00" + h_data),  # one byte long
        (n_data, b""),
        (b"\x00" * (MAX_MODULUS_BITS // 8 + 2), h_data),  # a modulus field longer than any modulus
        (n_data[:-1], h_data),  # another (even or too small) modulus
        (n_data, (0).to_bytes(256, "big")),
        (n_data, (1).to_bytes(256, "big")),
        (n_data, (int(pk.n2) - 1).to_bytes(256, "big")),  # −1: order 2
        (n_data, int(pk.n2).to_bytes(256, "big")),  # not below N²
        (n_data, key_a.p.to_bytes(256, "big")),  # shares a factor with N
    ]
    for n_bytes, h_bytes in bad:
        with pytest.raises(WireFormatError):
            PublicKey.from_bytes(n_bytes, h_bytes)


@pytest.mark.parametrize("n", [2**1023 + 2, 3, 2**8200 + 1])  # even, too small, too large
def test_public_key_validation(n: int) -> None:
    with pytest.raises(WireFormatError):
        PublicKey(n, 4)


def test_ciphertext_serialisation(key_a: PrivateKey) -> None:
    pk = key_a.public
    c = _encrypt(pk, 5)
    data = pk.encode_ciphertext(c)
    assert len(data) == pk.ciphertext_bytes == 256
    assert pk.decode_ciphertext(data) == c
    for bad in (data[1:], b"\x00" * 256, int(pk.n2).to_bytes(256, "big")):
        with pytest.raises(WireFormatError):
            pk.decode_ciphertext(bad)


def test_private_key_checks_and_hides_factors(key_a: PrivateKey) -> None:
    k = key_a
    assert all(str(v) not in repr(k) for v in (k.p, k.q, k.a_p, k.a_q))
    with pytest.raises(SpecError):
        PrivateKey(k.public, k.p, k.q + 2, k.a_p, k.a_q)
    with pytest.raises(SpecError):  # a_p does not divide (p − 1)/2
        PrivateKey(k.public, k.p, k.q, k.a_p + 2, k.a_q)
    with pytest.raises(SpecError):  # a base outside the subgroup (not even an N-th residue)
        PrivateKey(PublicKey(k.public.n, k.public.h_s * (1 + k.public.n) % k.public.n2), k.p, k.q, k.a_p, k.a_q)
    swapped = PrivateKey(k.public, k.q, k.p, k.a_q, k.a_p)
    assert (swapped.p, swapped.a_p) == (k.p, k.a_p)  # p is the smaller prime, a_p goes with it


@pytest.mark.parametrize("bits", [2048, 3072])
def test_study_key_sizes(bits: int) -> None:
    key = generate_keypair(bits)
    pk = key.public
    assert pk.bits == bits and key.p.bit_length() == key.q.bit_length() == bits // 2
    assert key.a_p.bit_length() >= subgroup_prime_bits(bits) and pk.exponent_bits == exponent_bits(bits)
    layout = SlotLayout.for_columns(11, bits)  # 10 features + the target
    plain = [[secrets.randbits(64) for _ in range(11)] for _ in range(3)]
    cts = encrypt_rows(pk, pack_rows(layout, plain), generate_pool(pk, 3 * layout.ciphertexts_per_row))
    masked = mask_rows(pk, layout, cts, 11)
    shares = owner_shares(key, layout, masked.ciphertexts, [f"c{i}" for i in range(11)], threads=2)
    assert _sums(shares.values, masked.helper_shares) == plain
    assert key.decrypt(cts[0][0]) == pack_rows(layout, plain)[0][0]
    assert pk.ciphertext_bytes == bits // 4


def test_key_size_must_be_the_studys_and_at_least_the_minimum() -> None:
    check_key_size(2048, 2048)
    check_key_size(3072, 3072)
    check_key_size(3072, 0)  # 0: the study's default, 3072
    check_key_size(1024, 1024, minimum=1024)  # a test mesh's config only
    with pytest.raises(KeySizeError, match="the Paillier key has 2048 bits; the study's keys have 3072"):
        check_key_size(2048, 0)
    with pytest.raises(KeySizeError, match="the study's keys have 3072"):
        check_key_size(2048, 3072)
    with pytest.raises(KeySizeError, match="accepts no key below 2048"):
        check_key_size(1024, 1024)
