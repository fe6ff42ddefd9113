"""Paillier with g = N + 1, randomness from a small secret-order subgroup, fast decryption.

Scheme: Ma, Han, Lei, "Optimized Paillier's Cryptosystem with Fast Encryption and
Decryption", ACSAC 2021, pp. 106–118 — an instance of Paillier's own fast-decryption
"scheme 3" (Paillier, EUROCRYPT 1999, §6: g of order α·N, decryption exponent α
instead of λ) combined with the short exponents of Damgård–Jurik–Nielsen (IJIS 2010, §4).
docs/adr/0007-paillier-fast-decryption.md records the choice.

Keys. N = p·q with p < q primes of exactly bits(N)/2 bits each (the top two bits
set, so N has exactly the requested size and ``packing`` may assume
bits(p) = bits(N)/2), and each of a special form

    p = 2·a_p·b_p + 1,   q = 2·a_q·b_q + 1,   a_p, a_q, b_p, b_q prime,

with a_p, a_q of 2κ bits (κ = the security level of the modulus size, 128 at
3072 bits) and b_p, b_q filling the rest. Let α = a_p·a_q, β = b_p·b_q. The key
owner draws y ∈ Z*_N and publishes

    h_s = (−y^(2β) mod N)^N mod N²,

an N-th residue whose order divides 2α: a small subgroup (≈ 4κ + 1 bits) of the
N-th residues, whose order stays secret (α reveals p and q). The public key is
(N, h_s); the private key is (p, q, a_p, a_q).

Encryption. Enc(m; r) = (1 + m·N) · h_s^r mod N²,   r uniform of 4κ bits.
Since g^m = (1+N)^m = 1 + m·N mod N², adding a public k to a ciphertext is still
c·(1 + k·N) mod N² (the helper's mask), and the randomness ρ = h_s^r is a
precomputed one-time pool element, so encryption is one multiplication.

Decryption. Modulo p², h_s has order dividing 2·a_p, so c^(2·a_p) kills the
randomness and leaves (1+N)^(2·a_p·m) = 1 + 2·a_p·m·N mod p²:

    m mod p = L_p(c^(2·a_p) mod p²) · (2·a_p·q)^(−1) mod p,   L_p(u) = (u − 1)/p,

likewise mod q, and m by CRT. The exponent has 2κ + 1 bits (257 at 3072) instead of
the bits(N)/2 of p − 1 (1,536): about six times less work. When the plaintext is
known to be below p (``packing`` guarantees it) m = m mod p: half again.
``decrypt_many`` batches with ``gmpy2.powmod_base_list``, which releases the GIL, so
threads use several cores.

Security. IND-CPA rests on DCR and on the short-exponent subgroup assumption of Ma
et al. (h_s^r for a 4κ-bit r is indistinguishable from a random element of ⟨h_s⟩).
The sizes follow the generic attacks they discuss: a collision search for the
order of h_s modulo the unknown p (Pollard rho with gcds against N) costs
≈ √a_p = 2^κ, hence 2κ-bit a_p, a_q; a 4κ-bit exponent keeps the generic 2^(t/2)
attacks on r at 2κ. κ follows NIST SP 800-57 Part 1 (Table 2): 112 at 2048 bits,
128 at 3072.

Offline / online. ``generate_pool`` precomputes the ρ values (offline phase,
optionally over several processes) with a fixed-base window table: h_s^r costs
⌈4κ/w⌉ − 1 multiplications. Each ρ is popped exactly once: reusing ρ for two
ciphertexts c1, c2 would let the helper compute c1/c2 = Enc(m1 − m2; 0), i.e.
1 + (m1 − m2)·N, and read m1 − m2.

Serialisation. A public key is N big-endian (minimal length) and h_s big-endian in
the fixed ciphertext width ⌈bits(N²)/8⌉; key_id = hex(SHA-256(len(N bytes) as two
bytes ‖ N bytes ‖ h_s bytes))[:32]. A ciphertext is big-endian, fixed width.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache

import gmpy2
import numpy as np

from services.join.core.errors import KeySizeError, PoolExhaustedError, SpecError, WireFormatError
from services.join.core.parallel import chunks, split_sizes

DEFAULT_MODULUS_BITS = 3072
#: Smallest key the servers accept (the study rules allow 2048 or 3072). Only a test
#: mesh's config lowers it (`min_paillier_bits`), to MIN_MODULUS_BITS at most.
MIN_KEY_BITS = 2048
MIN_MODULUS_BITS = 1024  # below the study minimum (2048): tests and quick benchmarks only
MAX_MODULUS_BITS = 8192
# NIST SP 800-57 Part 1 Rev. 5, Table 2: factoring modulus bits → security strength κ.
SECURITY_LEVELS = ((1024, 80), (2048, 112), (3072, 128), (7680, 192))
# Per process; bounds the window size. 48 MiB admits w = 10 at 3072 bits (52 windows × 1,023
# entries × 768 B = 41 MB: 51 products per element instead of w = 9's 56, for large runs). Not
# more: a 74 MB table (w = 11) measured slower per product than the 22 MB one (w = 9) on a 32 MB
# L3, which ate its 18 % fewer products.
MAX_TABLE_BYTES = 48 << 20
WINDOW_MIN_SAVING = 0.02  # a larger window must cut build + use multiplications by this much
KEY_ID_HEX_CHARS = 32
# Key generation sieves candidates for a_p by the odd primes below SIEVE_LIMIT, SIEVE_WINDOW at a time.
SIEVE_LIMIT = 1 << 15
SIEVE_WINDOW = 1 << 16

mpz = gmpy2.mpz


def check_key_size(bits: int, study_bits: int, minimum: int = MIN_KEY_BITS) -> None:
    """Refuse (KeySizeError) a key whose modulus is not the study's size (0 = the default) or is below `minimum`."""
    expected = study_bits or DEFAULT_MODULUS_BITS
    if bits != expected:
        raise KeySizeError(f"the Paillier key has {bits} bits; the study's keys have {expected}")
    if bits < minimum:
        raise KeySizeError(f"the Paillier key has {bits} bits; this server accepts no key below {minimum}")


def security_bits(modulus_bits: int) -> int:
    """κ of a modulus size: the level of the largest listed size it reaches."""
    return max(kappa for bits, kappa in SECURITY_LEVELS if bits <= max(modulus_bits, SECURITY_LEVELS[0][0]))


def subgroup_prime_bits(modulus_bits: int) -> int:
    """Bits of a_p and a_q: 2κ (256 at 3072 bits)."""
    return 2 * security_bits(modulus_bits)


def exponent_bits(modulus_bits: int) -> int:
    """Bits of the encryption exponent r: 4κ (512 at 3072 bits, 448 at 2048)."""
    return 4 * security_bits(modulus_bits)


def _check_modulus(n: int) -> None:
    if not MIN_MODULUS_BITS <= n.bit_length() <= MAX_MODULUS_BITS or n % 2 == 0:
        raise WireFormatError(f"a Paillier modulus must be odd with {MIN_MODULUS_BITS}–{MAX_MODULUS_BITS} bits")


@dataclass(frozen=True)
class PublicKey:
    """A Paillier public key: the modulus N (g = N + 1) and the randomness base h_s."""

    n: int
    h_s: int = field(repr=False)

    def __post_init__(self) -> None:
        n, h_s = int(self.n), int(self.h_s)
        _check_modulus(n)
        # h_s must be a unit of Z*_{N²} of order above 2 (never 1 or −1: ρ would be
        # trivial); its order is the key owner's to guarantee and cannot be checked here.
        n2 = n * n
        if not 1 < h_s < n2 - 1 or gmpy2.gcd(h_s, n) != 1 or h_s * h_s % n2 == 1:
            raise WireFormatError("the Paillier randomness base is not a valid unit modulo N²")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "h_s", h_s)

    @property
    def bits(self) -> int:
        """Size of N in bits."""
        return self.n.bit_length()

    @property
    def exponent_bits(self) -> int:
        """Bits of the encryption exponent r for this key size."""
        return exponent_bits(self.bits)

    @cached_property
    def _n(self) -> gmpy2.mpz:
        return mpz(self.n)

    @cached_property
    def n2(self) -> gmpy2.mpz:
        """N² (the ciphertext modulus)."""
        return self._n * self._n

    @cached_property
    def key_id(self) -> str:
        """Hex prefix of SHA-256 over N (length-prefixed) and h_s."""
        n_bytes = self.to_bytes()
        digest = hashlib.sha256(len(n_bytes).to_bytes(2, "big") + n_bytes + self.h_s_bytes())
        return digest.hexdigest()[:KEY_ID_HEX_CHARS]

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of a serialised ciphertext (and of h_s)."""
        return (int(self.n2).bit_length() + 7) // 8

    def to_bytes(self) -> bytes:
        """N big-endian, minimal length (``PaillierPublicKey.n``)."""
        return self.n.to_bytes((self.bits + 7) // 8, "big")

    def h_s_bytes(self) -> bytes:
        """h_s big-endian, ``ciphertext_bytes`` wide (``PaillierPublicKey.h_s``)."""
        return self.h_s.to_bytes(self.ciphertext_bytes, "big")

    @classmethod
    def from_bytes(cls, n_data: bytes, h_s_data: bytes, key_id: str | None = None) -> PublicKey:
        """Parse ``PaillierPublicKey.n`` and ``.h_s``; if ``key_id`` is given it must match."""
        if len(n_data) > MAX_MODULUS_BITS // 8 + 1:  # before any arithmetic on it
            raise WireFormatError("the Paillier modulus is too long")
        n = int.from_bytes(n_data, "big")
        _check_modulus(n)
        if len(h_s_data) != ((n * n).bit_length() + 7) // 8:
            raise WireFormatError("the Paillier randomness base has the wrong length for the modulus")
        key = cls(n, int.from_bytes(h_s_data, "big"))
        if key_id is not None and key_id != key.key_id:
            raise WireFormatError("the Paillier key id does not match the key")
        return key

    def encrypt(self, m: int, rho: int) -> int:
        """(1 + m·N)·ρ mod N² for 0 ≤ m < N and a fresh pool element ρ (one mulmod)."""
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
class _Decryption:
    """Per prime: modulus p², exponent 2·a_p, and the factor (2·a_p·q)^(−1) mod p."""

    p: gmpy2.mpz
    p2: gmpy2.mpz
    exponent: gmpy2.mpz
    factor: gmpy2.mpz

    @classmethod
    def of(cls, p: int, a: int, other: int) -> _Decryption:
        p_, exponent = mpz(p), 2 * mpz(a)
        return cls(p_, p_ * p_, exponent, gmpy2.invert(exponent * other % p_, p_))

    def residue(self, u: gmpy2.mpz) -> gmpy2.mpz:
        """m mod p from u = c^(2·a_p) mod p²."""
        return _l(u, self.p) * self.factor % self.p


@dataclass(frozen=True)
class PrivateKey:
    """The factors p < q of N and the subgroup primes a_p | p − 1, a_q | q − 1."""

    public: PublicKey
    p: int = field(repr=False)
    q: int = field(repr=False)
    a_p: int = field(repr=False)
    a_q: int = field(repr=False)

    def __post_init__(self) -> None:
        (p, a_p), (q, a_q) = sorted(((int(self.p), int(self.a_p)), (int(self.q), int(self.a_q))))
        if p * q != self.public.n or p == q:
            raise SpecError("p·q does not match the public modulus")
        if a_p < 3 or a_q < 3 or (p - 1) % (2 * a_p) or (q - 1) % (2 * a_q):
            raise SpecError("a_p and a_q must be odd divisors of (p − 1)/2 and (q − 1)/2")
        h_s = mpz(self.public.h_s)
        if gmpy2.powmod(h_s, 2 * a_p, p * p) != 1 or gmpy2.powmod(h_s, 2 * a_q, q * q) != 1:
            raise SpecError("the public randomness base is not in the subgroup these factors define")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "a_p", a_p)
        object.__setattr__(self, "a_q", a_q)

    @cached_property
    def _at_p(self) -> _Decryption:
        return _Decryption.of(self.p, self.a_p, self.q)

    @cached_property
    def _at_q(self) -> _Decryption:
        return _Decryption.of(self.q, self.a_q, self.p)

    @cached_property
    def _p_inv_q(self) -> gmpy2.mpz:
        return gmpy2.invert(mpz(self.p), mpz(self.q))

    @property
    def fast_plaintext_bits(self) -> int:
        """Plaintexts below 2^fast_plaintext_bits are below p: p-only decryption applies."""
        return self.p.bit_length() - 1

    def _combine(self, mp: gmpy2.mpz, mq: gmpy2.mpz) -> int:
        return int(mp + self._at_p.p * ((mq - mp) * self._p_inv_q % self._at_q.p))

    def decrypt(self, c: int) -> int:
        """Full decryption by CRT: m ∈ [0, N)."""
        at_p, at_q = self._at_p, self._at_q
        c = mpz(c)
        mp = at_p.residue(gmpy2.powmod(c, at_p.exponent, at_p.p2))
        mq = at_q.residue(gmpy2.powmod(c, at_q.exponent, at_q.p2))
        return self._combine(mp, mq)

    def decrypt_below_p(self, c: int) -> int:
        """Decryption with p only: correct when the plaintext is below p (else m mod p)."""
        at_p = self._at_p
        return int(at_p.residue(gmpy2.powmod(mpz(c), at_p.exponent, at_p.p2)))


def _random_prime(bits: int) -> gmpy2.mpz:
    """A prime of exactly ``bits`` bits whose top two bits are set."""
    while True:
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 1
        p = gmpy2.next_prime(candidate)
        if p.bit_length() == bits and gmpy2.is_strong_bpsw_prp(p):
            return p


@cache
def _small_odd_primes() -> tuple[int, ...]:
    """The odd primes below the sieve limit (Eratosthenes)."""
    flags = np.ones(SIEVE_LIMIT, dtype=bool)
    flags[:2] = False
    for i in range(2, int(SIEVE_LIMIT**0.5) + 1):
        if flags[i]:
            flags[i * i :: i] = False
    return tuple(int(s) for s in np.flatnonzero(flags) if s > 2)


def _sieved_offsets(a0: int, two_b: int) -> np.ndarray:
    """Offsets j < SIEVE_WINDOW such that neither a = a0 + 2j nor 2·a·b + 1 has an odd
    prime factor below SIEVE_LIMIT (a0 odd and far larger than the limit)."""
    keep = np.ones(SIEVE_WINDOW, dtype=bool)
    for s in _small_odd_primes():
        half = (s + 1) // 2  # 2^(−1) mod s
        keep[(-a0) * half % s :: s] = False  # s | a
        tb = two_b % s
        if tb:  # s | 2ab + 1  ⇔  a ≡ −(2b)^(−1) mod s
            keep[(-pow(tb, -1, s) - a0) * half % s :: s] = False
    return np.flatnonzero(keep)


def _structured_prime(bits: int, small_bits: int) -> tuple[gmpy2.mpz, gmpy2.mpz, gmpy2.mpz]:
    """(p, a, b): p = 2·a·b + 1 prime in [3·2^(bits−2), 2^bits), a and b prime, a of about
    ``small_bits`` bits (at least that many). b is fixed first; a is searched, sieved, over
    the range that keeps p in its interval, so every candidate has the right size."""
    b = _random_prime(bits - small_bits - 1)
    lo = -(-((3 << (bits - 2)) - 1) // (2 * b))
    hi = ((1 << bits) - 2) // (2 * b)
    while True:
        a0 = int(lo + secrets.randbelow(int(hi - lo) - 2 * SIEVE_WINDOW)) | 1
        for j in _sieved_offsets(a0, int(2 * b)):
            a = mpz(a0 + 2 * int(j))
            if gmpy2.is_prime(a):
                p = 2 * a * b + 1
                if gmpy2.is_prime(p):
                    return p, a, b


def generate_keypair(modulus_bits: int = DEFAULT_MODULUS_BITS) -> PrivateKey:
    """A fresh key pair (the public key is ``.public``); both primes have modulus_bits/2 bits."""
    if modulus_bits % 2 or not MIN_MODULUS_BITS <= modulus_bits <= MAX_MODULUS_BITS:
        raise SpecError(f"modulus bits must be even, {MIN_MODULUS_BITS}–{MAX_MODULUS_BITS}")
    half, small = modulus_bits // 2, subgroup_prime_bits(modulus_bits)
    while True:
        p, a_p, b_p = _structured_prime(half, small)
        q, a_q, b_q = _structured_prime(half, small)
        n = p * q
        if p != q and a_p != a_q and n.bit_length() == modulus_bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    n2 = n * n
    while True:
        y = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(y, n) != 1:
            continue
        h = -gmpy2.powmod(y, 2 * b_p * b_q, n) % n  # order divides 2·a_p·a_q modulo N
        h_s = gmpy2.powmod(h, n, n2)  # an N-th residue of the same order
        if h_s * h_s % n2 != 1:
            return PrivateKey(PublicKey(int(n), int(h_s)), int(p), int(q), int(a_p), int(a_q))


def _decrypt_chunk_p(cs: Sequence[int], at_p: _Decryption) -> list[int]:
    return [int(at_p.residue(u)) for u in gmpy2.powmod_base_list([mpz(c) for c in cs], at_p.exponent, at_p.p2)]


def _decrypt_chunk_crt(cs: Sequence[int], key: PrivateKey) -> list[int]:
    at_p, at_q = key._at_p, key._at_q
    bases = [mpz(c) for c in cs]
    ups = gmpy2.powmod_base_list(bases, at_p.exponent, at_p.p2)
    uqs = gmpy2.powmod_base_list(bases, at_q.exponent, at_q.p2)
    return [key._combine(at_p.residue(up), at_q.residue(uq)) for up, uq in zip(ups, uqs, strict=True)]


def decrypt_many(key: PrivateKey, ciphertexts: Sequence[int], *, below_p: bool = False, threads: int = 1) -> list[int]:
    """Decrypt in order; ``below_p`` selects the p-only path; ``threads`` > 1 uses more cores."""
    at_p = key._at_p

    def work(cs: Sequence[int]) -> list[int]:
        return _decrypt_chunk_p(cs, at_p) if below_p else _decrypt_chunk_crt(cs, key)

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


def _random_exponent(bits: int) -> int:
    while True:
        a = secrets.randbits(bits)
        if a:  # r = 0 gives ρ = 1, which would expose m; probability 2^-bits
            return a


def choose_window_bits(
    count: int, exponent_bits: int, modulus_bits: int, max_table_bytes: int = MAX_TABLE_BYTES
) -> int:
    """Window size w for ``count`` elements: the cheapest in build + use multiplications,
    ⌈t/w⌉·(2^w − 1) + count·(⌈t/w⌉ − 1), within ``max_table_bytes`` of table, where a larger
    window must save at least WINDOW_MIN_SAVING of the cost to be worth its memory
    (at 3072 bits: w = 9 for 5,000 elements per worker, 10 from ~10,000)."""
    entry_bytes = (modulus_bits + 7) // 8
    best_w, best_cost = 1, None
    for w in range(1, 17):
        windows = -(-exponent_bits // w)
        entries = windows * ((1 << w) - 1)
        if w > 1 and entries * entry_bytes > max_table_bytes:
            break
        cost = entries + count * (windows - 1)
        if best_cost is None or cost < best_cost * (1 - WINDOW_MIN_SAVING):
            best_w, best_cost = w, cost
    return best_w


@lru_cache(maxsize=1)
def _table(n2: int, h_s: int, exponent_bits: int, window_bits: int) -> FixedBaseTable:
    """The last table built in this process: a run's pieces reuse it (the table holds only
    public powers of h_s; the exponents are drawn afresh for every element)."""
    return FixedBaseTable(h_s, n2, exponent_bits, window_bits)


def pool_chunk(n2: int, h_s: int, exponent_bits: int, window_bits: int | None, count: int) -> list[int]:
    """``count`` fresh ρ = h_s^r mod N²; a top-level function of plain ints, for worker processes."""
    if count <= 0:
        return []
    if window_bits is None:
        window_bits = choose_window_bits(count, exponent_bits, int(n2).bit_length())
    table = _table(int(n2), int(h_s), exponent_bits, window_bits)
    return [int(table.power(_random_exponent(exponent_bits))) for _ in range(count)]


class RandomnessPool:
    """Precomputed elements ρ = h_s^r for one public key; each is handed out once, then forgotten."""

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
    window_bits: int | None = None,
    executor: Executor | None = None,
    parts: int = 1,
) -> RandomnessPool:
    """Offline phase: ``count`` elements ρ = h_s^r for ``public_key``, r of ``public_key.exponent_bits``.

    With an ``executor`` (e.g. ``parallel.process_executor(2)``) the work is
    split into ``parts`` pieces; each worker builds its own window table
    (cheaper than shipping it) and draws its own exponents. ``window_bits``
    None chooses the window from the piece size (``choose_window_bits``).
    """
    n2, h_s, bits = int(public_key.n2), public_key.h_s, public_key.exponent_bits
    if executor is None or parts <= 1 or count < 2:
        return RandomnessPool(public_key.key_id, pool_chunk(n2, h_s, bits, window_bits, count))
    futures = [executor.submit(pool_chunk, n2, h_s, bits, window_bits, size) for size in split_sizes(count, parts)]
    return RandomnessPool(public_key.key_id, (rho for f in futures for rho in f.result()))


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
