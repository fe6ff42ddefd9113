"""Paillier encryption with g = N + 1, a DJN short-exponent randomness pool, fast decryption.

Scheme (Paillier 1999, with g = N + 1). N = p·q with p, q primes of exactly
bits(N)/2 bits each (the top two bits of each are set, so N has exactly the
requested size and ``packing`` may assume bits(p) = bits(N)/2).

    Enc(m; ρ) = (1 + m·N) · ρ  mod N²,      ρ an N-th residue (ρ = r^N)

since g^m = (1+N)^m = 1 + m·N mod N². Adding a public k to a ciphertext is
c·(1 + k·N) mod N². Both are a single modular multiplication once ρ is known.

Randomness (Damgård, Jurik, Nielsen, "A generalization of Paillier's
public-key system with applications to electronic voting", IJIS 2010, §4).
Instead of ρ = r^N with a full-size r (a 2048-bit exponent), the encrypting
party picks x ∈ Z*_N, sets h = −x² mod N and the base h_s = h^N mod N², and
uses ρ = h_s^a mod N² with a uniform a of 448 bits. The security of the
resulting encryption relies on the DCR assumption plus the assumption that
h^a for a short random a is indistinguishable from a random element of ⟨h⟩
(the short-exponent assumption of DJN 2010). Generic attacks on a t-bit
exponent cost about 2^(t/2), and the small prime factors of ord(h) (which
divides λ(N)) let an attacker learn a modulo those primes (van Oorschot–
Wiener); with random primes p, q, t = 448 = 4 × 112 bits (2048-bit N aims at
112-bit security) keeps a wide margin.

Fixed-base table. With w-bit windows, a = Σ_k a_k·2^(k·w) and the table holds
T[k][j] = h_s^(j·2^(k·w)), so h_s^a = Π_k T[k][a_k] costs ⌈448/w⌉ − 1
multiplications instead of ~500 for a modular exponentiation.

Offline / online. ``generate_pool`` precomputes the ρ values (offline phase,
optionally over several processes). Each ρ is popped exactly once: reusing ρ
for two ciphertexts c1, c2 would let the helper compute c1/c2 = Enc(m1 − m2; 1),
i.e. (1 + (m1 − m2)·N), and read m1 − m2.

Decryption. m_p = L_p(c^(p−1) mod p²) · h_p mod p with L_p(u) = (u − 1)/p and
h_p = L_p(g^(p−1) mod p²)^(−1) mod p (likewise for q), and m by CRT. When the
plaintext is known to be below p (``packing`` guarantees it) m = m_p: half
the work. ``decrypt_many`` batches with ``gmpy2.powmod_base_list``, which
releases the GIL, so threads use several cores.

Serialisation. A public key is N big-endian (minimal length) with
key_id = hex(SHA-256(N bytes))[:32]. A ciphertext is big-endian, fixed width
⌈bits(N²)/8⌉ bytes.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import gmpy2

from services.join.core.errors import KeySizeError, PoolExhaustedError, SpecError, WireFormatError
from services.join.core.parallel import chunks, split_sizes

DEFAULT_MODULUS_BITS = 2048
#: Smallest key the servers accept (the study rules allow 2048 or 3072). Only a test
#: mesh's config lowers it (`min_paillier_bits`), to MIN_MODULUS_BITS at most.
MIN_KEY_BITS = 2048
MIN_MODULUS_BITS = 1024
MAX_MODULUS_BITS = 8192
DEFAULT_EXPONENT_BITS = 448
MAX_TABLE_BYTES = 32 << 20  # per process; bounds the window size
KEY_ID_HEX_CHARS = 32

mpz = gmpy2.mpz


def check_key_size(bits: int, study_bits: int, minimum: int = MIN_KEY_BITS) -> None:
    """Refuse (KeySizeError) a key whose modulus is not the study's size (0 = the default) or is below `minimum`."""
    expected = study_bits or DEFAULT_MODULUS_BITS
    if bits != expected:
        raise KeySizeError(f"the Paillier key has {bits} bits; the study's keys have {expected}")
    if bits < minimum:
        raise KeySizeError(f"the Paillier key has {bits} bits; this server accepts no key below {minimum}")


@dataclass(frozen=True)
class PublicKey:
    """A Paillier public key with g = N + 1."""

    n: int

    def __post_init__(self) -> None:
        n = int(self.n)
        if not MIN_MODULUS_BITS <= n.bit_length() <= MAX_MODULUS_BITS or n % 2 == 0:
            raise WireFormatError(
                f"a Paillier modulus must be odd with {MIN_MODULUS_BITS}–{MAX_MODULUS_BITS} bits"
            )
        object.__setattr__(self, "n", n)

    @property
    def bits(self) -> int:
        """Size of N in bits."""
        return self.n.bit_length()

    @cached_property
    def _n(self) -> gmpy2.mpz:
        return mpz(self.n)

    @cached_property
    def n2(self) -> gmpy2.mpz:
        """N² (the ciphertext modulus)."""
        return self._n * self._n

    @cached_property
    def key_id(self) -> str:
        """Hex prefix of SHA-256 over N's big-endian bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:KEY_ID_HEX_CHARS]

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of a serialised ciphertext."""
        return (int(self.n2).bit_length() + 7) // 8

    def to_bytes(self) -> bytes:
        """N big-endian, minimal length (``PaillierPublicKey.n``)."""
        return self.n.to_bytes((self.bits + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes, key_id: str | None = None) -> PublicKey:
        """Parse ``PaillierPublicKey.n``; if ``key_id`` is given it must match."""
        key = cls(int.from_bytes(data, "big"))
        if key_id is not None and key_id != key.key_id:
            raise WireFormatError("the Paillier key id does not match the modulus")
        return key

    def encrypt(self, m: int, rho: int) -> int:
        """(1 + m·N)·ρ mod N² for 0 ≤ m < N and a fresh N-th residue ρ (one mulmod)."""
        if not 0 <= m < self.n:
            raise SpecError("a plaintext must lie in [0, N)")
        return int((1 + mpz(m) * self._n) * mpz(rho) % self.n2)

    def add_plain(self, c: int, k: int) -> int:
        """Enc(m)·(1 + k·N) mod N² = Enc(m + k mod N), with the same randomness."""
        return int(mpz(c) * (1 + mpz(k) % self._n * self._n) % self.n2)

    def encode_ciphertext(self, c: int) -> bytes:
        """Big-endian, ``ciphertext_bytes`` wide."""
        return int(c).to_bytes(self.ciphertext_bytes, "big")

    def decode_ciphertext(self, data: bytes) -> int:
        """Parse a fixed-width ciphertext; reject a wrong width or a value outside (0, N²)."""
        if len(data) != self.ciphertext_bytes:
            raise WireFormatError("a ciphertext has the wrong length for this key")
        c = int.from_bytes(data, "big")
        if not 0 < c < self.n2:
            raise WireFormatError("a ciphertext lies outside (0, N²)")
        return c


def _l(u: gmpy2.mpz, p: gmpy2.mpz) -> gmpy2.mpz:
    return (u - 1) // p


@dataclass(frozen=True)
class PrivateKey:
    """The factors p < q of N with the precomputed constants of CRT decryption."""

    public: PublicKey
    p: int = field(repr=False)
    q: int = field(repr=False)

    def __post_init__(self) -> None:
        p, q = sorted((int(self.p), int(self.q)))
        if p * q != self.public.n or p == q:
            raise SpecError("p·q does not match the public modulus")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)

    @cached_property
    def _crt(self) -> tuple[gmpy2.mpz, gmpy2.mpz, gmpy2.mpz, gmpy2.mpz, gmpy2.mpz, gmpy2.mpz, gmpy2.mpz]:
        p, q = mpz(self.p), mpz(self.q)
        p2, q2 = p * p, q * q
        g = self.public._n + 1
        hp = gmpy2.invert(_l(gmpy2.powmod(g, p - 1, p2), p), p)
        hq = gmpy2.invert(_l(gmpy2.powmod(g, q - 1, q2), q), q)
        p_inv_q = gmpy2.invert(p, q)
        return p, q, p2, q2, hp, hq, p_inv_q

    @property
    def fast_plaintext_bits(self) -> int:
        """Plaintexts below 2^fast_plaintext_bits are below p: p-only decryption applies."""
        return self.p.bit_length() - 1

    def decrypt(self, c: int) -> int:
        """Full decryption by CRT: m ∈ [0, N)."""
        p, q, p2, q2, hp, hq, p_inv_q = self._crt
        c = mpz(c)
        mp = _l(gmpy2.powmod(c, p - 1, p2), p) * hp % p
        mq = _l(gmpy2.powmod(c, q - 1, q2), q) * hq % q
        return int(mp + p * ((mq - mp) * p_inv_q % q))

    def decrypt_below_p(self, c: int) -> int:
        """Decryption with p only: correct when the plaintext is below p (else m mod p)."""
        p, _, p2, _, hp, _, _ = self._crt
        return int(_l(gmpy2.powmod(mpz(c), p - 1, p2), p) * hp % p)


def _random_prime(bits: int) -> gmpy2.mpz:
    """A prime of exactly ``bits`` bits whose top two bits are set."""
    while True:
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 1
        p = gmpy2.next_prime(candidate)
        if p.bit_length() == bits and gmpy2.is_strong_bpsw_prp(p):
            return p


def generate_keypair(modulus_bits: int = DEFAULT_MODULUS_BITS) -> PrivateKey:
    """A fresh key pair (the public key is ``.public``); both primes have modulus_bits/2 bits."""
    if modulus_bits % 2 or not MIN_MODULUS_BITS <= modulus_bits <= MAX_MODULUS_BITS:
        raise SpecError(f"modulus bits must be even, {MIN_MODULUS_BITS}–{MAX_MODULUS_BITS}")
    half = modulus_bits // 2
    while True:
        p, q = _random_prime(half), _random_prime(half)
        n = p * q
        if p != q and n.bit_length() == modulus_bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            return PrivateKey(PublicKey(int(n)), int(p), int(q))


def _decrypt_chunk_p(cs: Sequence[int], p: gmpy2.mpz, p2: gmpy2.mpz, hp: gmpy2.mpz) -> list[int]:
    return [int(_l(u, p) * hp % p) for u in gmpy2.powmod_base_list([mpz(c) for c in cs], p - 1, p2)]


def _decrypt_chunk_crt(cs: Sequence[int], key: PrivateKey) -> list[int]:
    p, q, p2, q2, hp, hq, p_inv_q = key._crt
    bases = [mpz(c) for c in cs]
    ups = gmpy2.powmod_base_list(bases, p - 1, p2)
    uqs = gmpy2.powmod_base_list(bases, q - 1, q2)
    out = []
    for up, uq in zip(ups, uqs):
        mp = _l(up, p) * hp % p
        mq = _l(uq, q) * hq % q
        out.append(int(mp + p * ((mq - mp) * p_inv_q % q)))
    return out


def decrypt_many(
    key: PrivateKey, ciphertexts: Sequence[int], *, below_p: bool = False, threads: int = 1
) -> list[int]:
    """Decrypt in order; ``below_p`` selects the p-only path; ``threads`` > 1 uses more cores."""
    p, _, p2, _, hp, _, _ = key._crt

    def work(cs: Sequence[int]) -> list[int]:
        return _decrypt_chunk_p(cs, p, p2, hp) if below_p else _decrypt_chunk_crt(cs, key)

    if threads <= 1 or len(ciphertexts) < 2:
        return work(ciphertexts)
    # Several chunks per thread keep the threads busy to the end despite uneven speed.
    parts = chunks(ciphertexts, threads * 4)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return [m for part in pool.map(work, parts) for m in part]


class FixedBaseTable:
    """Powers base^(j·2^(k·w)) mod modulus for fast exponentiation of one fixed base.

    Memory: ⌈exponent_bits/w⌉·(2^w − 1) residues (w = 8, 448 bits, N² of
    4096 bits: 14,280 × 512 B ≈ 7 MB). Build: as many multiplications.
    """

    def __init__(self, base: int, modulus: int, exponent_bits: int, window_bits: int) -> None:
        if not 1 <= window_bits <= 16 or exponent_bits < 1:
            raise SpecError("window bits must be in 1..16 and exponent bits positive")
        self.modulus = mpz(modulus)
        self.exponent_bits = exponent_bits
        self.window_bits = window_bits
        self.windows = -(-exponent_bits // window_bits)
        width = 1 << window_bits
        rows: list[list[gmpy2.mpz]] = []
        b = mpz(base) % self.modulus
        for _ in range(self.windows):
            row = [mpz(1), b]
            for _ in range(width - 2):
                row.append(row[-1] * b % self.modulus)
            rows.append(row)
            b = row[-1] * b % self.modulus  # base^(2^((k+1)·w))
        self._rows = rows

    def power(self, exponent: int) -> gmpy2.mpz:
        """base^exponent mod modulus for 0 ≤ exponent < 2^exponent_bits."""
        if not 0 <= exponent < 1 << self.exponent_bits:
            raise SpecError("exponent outside the table's range")
        mask = (1 << self.window_bits) - 1
        result = mpz(1)
        e = int(exponent)
        modulus = self.modulus
        for row in self._rows:
            digit = e & mask
            if digit:
                result = result * row[digit] % modulus
            e >>= self.window_bits
        return result


@dataclass(frozen=True)
class ShortExponentBase:
    """The encrypting party's public DJN base h_s = h^N mod N², h = −x² mod N."""

    key_id: str
    n2: int = field(repr=False)
    h_s: int = field(repr=False)
    exponent_bits: int = DEFAULT_EXPONENT_BITS

    @classmethod
    def new(cls, public_key: PublicKey, exponent_bits: int = DEFAULT_EXPONENT_BITS) -> ShortExponentBase:
        """Draw x ∈ Z*_N uniformly and return h_s = (−x²)^N mod N²."""
        n = mpz(public_key.n)
        while True:
            x = mpz(secrets.randbelow(public_key.n - 2) + 2)
            if gmpy2.gcd(x, n) == 1:
                break
        h = (-x * x) % n
        h_s = gmpy2.powmod(h, n, public_key.n2)
        return cls(public_key.key_id, int(public_key.n2), int(h_s), exponent_bits)


def _random_exponent(bits: int) -> int:
    while True:
        a = secrets.randbits(bits)
        if a:  # a = 0 gives ρ = 1, which would expose m; probability 2^-bits
            return a


def choose_window_bits(count: int, exponent_bits: int, modulus_bits: int, max_table_bytes: int = MAX_TABLE_BYTES) -> int:
    """Window size w minimising build + use multiplications, ⌈t/w⌉·(2^w − 1) + count·(⌈t/w⌉ − 1),
    within ``max_table_bytes`` of table (w = 10 for thousands of elements at 2048-bit N)."""
    entry_bytes = (modulus_bits + 7) // 8
    best_w, best_cost = 1, None
    for w in range(1, 17):
        windows = -(-exponent_bits // w)
        entries = windows * ((1 << w) - 1)
        if w > 1 and entries * entry_bytes > max_table_bytes:
            break
        cost = entries + count * (windows - 1)
        if best_cost is None or cost < best_cost:
            best_w, best_cost = w, cost
    return best_w


def pool_chunk(n2: int, h_s: int, exponent_bits: int, window_bits: int | None, count: int) -> list[int]:
    """``count`` fresh ρ = h_s^a mod N²; a top-level function of plain ints, for worker processes."""
    if count <= 0:
        return []
    if window_bits is None:
        window_bits = choose_window_bits(count, exponent_bits, int(n2).bit_length())
    table = FixedBaseTable(h_s, n2, exponent_bits, window_bits)
    return [int(table.power(_random_exponent(exponent_bits))) for _ in range(count)]


class RandomnessPool:
    """Precomputed N-th residues for one public key; each is handed out once, then forgotten."""

    def __init__(self, key_id: str, elements: Iterable[int]) -> None:
        self.key_id = key_id
        self._elements = list(elements)

    def __len__(self) -> int:
        return len(self._elements)

    def __repr__(self) -> str:
        return f"RandomnessPool(key_id={self.key_id!r}, remaining={len(self)})"

    def pop(self) -> int:
        """Remove and return one element; PoolExhaustedError when empty (never reuse)."""
        if not self._elements:
            raise PoolExhaustedError("the randomness pool is exhausted; elements are never reused")
        return self._elements.pop()

    def take(self, count: int) -> list[int]:
        """Remove and return ``count`` elements at once (all or nothing)."""
        if count > len(self._elements):
            raise PoolExhaustedError("the randomness pool holds fewer elements than requested")
        if count <= 0:
            return []
        taken = self._elements[-count:]
        del self._elements[-count:]
        return taken


def generate_pool(
    public_key: PublicKey,
    count: int,
    *,
    exponent_bits: int = DEFAULT_EXPONENT_BITS,
    window_bits: int | None = None,
    executor: Executor | None = None,
    parts: int = 1,
) -> RandomnessPool:
    """Offline phase: ``count`` elements ρ for ``public_key``.

    With an ``executor`` (e.g. ``parallel.process_executor(2)``) the work is
    split into ``parts`` pieces; each worker builds its own window table
    (cheaper than shipping it) and draws its own exponents. ``window_bits``
    None chooses the window from the piece size (``choose_window_bits``).
    """
    base = ShortExponentBase.new(public_key, exponent_bits)
    if executor is None or parts <= 1 or count < 2:
        return RandomnessPool(base.key_id, pool_chunk(base.n2, base.h_s, exponent_bits, window_bits, count))
    futures = [
        executor.submit(pool_chunk, base.n2, base.h_s, exponent_bits, window_bits, size)
        for size in split_sizes(count, parts)
    ]
    return RandomnessPool(base.key_id, (rho for f in futures for rho in f.result()))


def encrypt_rows(public_key: PublicKey, packed_rows: Sequence[Sequence[int]], pool: RandomnessPool) -> list[list[int]]:
    """Encrypt every packed plaintext with its own pool element (online phase)."""
    if pool.key_id != public_key.key_id:
        raise SpecError("the randomness pool belongs to another key")
    total = sum(len(row) for row in packed_rows)
    rhos = pool.take(total)  # fails before any work if the pool is short
    n, n2 = public_key._n, public_key.n2
    out: list[list[int]] = []
    k = 0
    for row in packed_rows:
        enc_row = []
        for m in row:
            if not 0 <= m < public_key.n:
                raise SpecError("a plaintext must lie in [0, N)")
            enc_row.append(int((1 + mpz(m) * n) * mpz(rhos[k]) % n2))
            k += 1
        out.append(enc_row)
    return out
