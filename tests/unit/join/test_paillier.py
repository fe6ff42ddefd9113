"""Paillier (g = N+1) with the DJN pool: correctness, fast paths, pool discipline, wire format."""

from __future__ import annotations

import secrets

import gmpy2
import phe.paillier
import pytest

from services.join.core.errors import KeySizeError, PoolExhaustedError, SpecError, WireFormatError
from services.join.core.paillier import (
    FixedBaseTable,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    ShortExponentBase,
    check_key_size,
    choose_window_bits,
    decrypt_many,
    encrypt_rows,
    generate_keypair,
    generate_pool,
)
from services.join.core.parallel import chunks, process_executor, split_sizes


def _encrypt(pk: PublicKey, m: int) -> int:
    return encrypt_rows(pk, [[m]], generate_pool(pk, 1))[0][0]


def test_keygen_shape(key_a: PrivateKey) -> None:
    assert key_a.public.bits == 1024
    assert key_a.p.bit_length() == key_a.q.bit_length() == 512
    assert key_a.p < key_a.q and gmpy2.is_prime(key_a.p) and gmpy2.is_prime(key_a.q)
    assert key_a.fast_plaintext_bits == 511


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


def test_matches_phe(key_a: PrivateKey) -> None:
    m = secrets.randbits(1000)
    c = _encrypt(key_a.public, m)
    reference = phe.paillier.PaillierPrivateKey(phe.paillier.PaillierPublicKey(key_a.public.n), key_a.p, key_a.q)
    assert reference.raw_decrypt(c) == m


def test_same_plaintext_gives_different_ciphertexts(key_a: PrivateKey) -> None:
    assert _encrypt(key_a.public, 42) != _encrypt(key_a.public, 42)


def test_homomorphic_add(key_a: PrivateKey) -> None:
    pk = key_a.public
    m, k = secrets.randbits(300), secrets.randbits(300)
    c = _encrypt(pk, m)
    assert key_a.decrypt(pk.add_plain(c, k)) == m + k
    assert key_a.decrypt(pk.add_plain(c, pk.n - 1)) == (m - 1) % pk.n


def test_pool_elements_are_nth_residues(key_a: PrivateKey) -> None:
    # (1 + 0·N)·ρ decrypts to 0 iff ρ is an N-th residue.
    for rho in generate_pool(key_a.public, 5).take(5):
        assert key_a.decrypt(rho) == 0


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


def test_window_choice() -> None:
    small, large = choose_window_bits(10, 448, 4096), choose_window_bits(10_000, 448, 4096)
    assert small < large == 10  # 11 would exceed the 32 MiB table cap
    assert choose_window_bits(10_000, 448, 4096, max_table_bytes=8 << 20) == 8


def test_short_exponent_base(key_a: PrivateKey) -> None:
    base = ShortExponentBase.new(key_a.public)
    assert base.exponent_bits == 448 and base.key_id == key_a.public.key_id
    assert key_a.decrypt(base.h_s) == 0  # h_s = h^N is an N-th residue
    assert str(base.h_s) not in repr(base)


def test_pool_over_processes(key_a: PrivateKey) -> None:
    with process_executor(2) as executor:
        pool = generate_pool(key_a.public, 7, executor=executor, parts=2)
    elements = pool.take(7)
    assert len(set(elements)) == 7 and all(key_a.decrypt(rho) == 0 for rho in elements)


def test_split_helpers() -> None:
    assert split_sizes(5, 2) == [3, 2] and split_sizes(1, 4) == [1] and split_sizes(0, 3) == []
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 3)] == [[1, 2], [3, 4], [5]]


def test_public_key_serialisation(key_a: PrivateKey) -> None:
    pk = key_a.public
    data = pk.to_bytes()
    assert len(data) == 128 and int.from_bytes(data, "big") == pk.n
    assert PublicKey.from_bytes(data, pk.key_id) == pk
    assert PublicKey.from_bytes(b"\x00" + data).key_id == pk.key_id
    assert len(pk.key_id) == 32
    with pytest.raises(WireFormatError):
        PublicKey.from_bytes(data, "0" * 32)


@pytest.mark.parametrize("n", [2**1023 + 2, 3, 2**8200 + 1])  # even, too small, too large
def test_public_key_validation(n: int) -> None:
    with pytest.raises(WireFormatError):
        PublicKey(n)


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
    assert str(key_a.p) not in repr(key_a)
    with pytest.raises(SpecError):
        PrivateKey(key_a.public, key_a.p, key_a.q + 2)
    assert PrivateKey(key_a.public, key_a.q, key_a.p).p == key_a.p  # p is the smaller prime


def test_2048_bit_key() -> None:
    key = generate_keypair(2048)
    assert key.public.bits == 2048 and key.p.bit_length() == key.q.bit_length() == 1024
    plain = [secrets.randbits(945) for _ in range(4)]
    cts = [row[0] for row in encrypt_rows(key.public, [[m] for m in plain], generate_pool(key.public, 4))]
    assert decrypt_many(key, cts, below_p=True) == plain
    assert key.decrypt(cts[0]) == plain[0]
    assert key.public.ciphertext_bytes == 512


def test_key_size_must_be_the_studys_and_at_least_the_minimum() -> None:
    check_key_size(2048, 2048)
    check_key_size(3072, 3072)
    check_key_size(2048, 0)  # 0: the study's default, 2048
    check_key_size(1024, 1024, minimum=1024)  # a test mesh's config only
    with pytest.raises(KeySizeError, match="the Paillier key has 3072 bits; the study's keys have 2048"):
        check_key_size(3072, 0)
    with pytest.raises(KeySizeError, match="the study's keys have 3072"):
        check_key_size(2048, 3072)
    with pytest.raises(KeySizeError, match="accepts no key below 2048"):
        check_key_size(1024, 1024)
