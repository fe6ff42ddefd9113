"""Secure fixed-point arithmetic on Shamir-shared arrays of one prime field (MPyC).

Values are numpy object arrays of Python ints in [0, p): this party's Shamir
shares (degree t, or degree 2t right after a local product), of integers that
represent reals with ``frac`` fractional bits. The runtime ``mpc`` (MPyC 0.11)
supplies the network, pseudorandom secret sharing (PRSS, Cramer–Damgård–Ishai
2005) and its secure comparison; everything else is done here, explicitly, one
communication round per call:

* ``trunc`` — probabilistic truncation (Catrina & Saxena, FC 2010) with the
  random mask taken from PRSS only: r = r_lo + 2^f·r_hi, r_lo ∈ [0, M·2^f),
  r_hi ∈ [0, M·2^(κ+ℓ−f)) (M PRSS subsets, κ = security bits), open
  c = x + 2^(ℓ−1) + r and return ⌊c/2^f⌋ − r_hi − 2^(ℓ−1−f) = ⌊(x + r_lo)/2^f⌋.
  The error is within [−1, +M−1) units in the last place after subtracting the
  public mean bias ⌊(M−1)/2⌋. MPyC's ``np_trunc`` instead spends f secure
  random bits per element (a modular square root each).
* A degree-2t input (a local product of two degree-t sharings) is opened with
  threshold 2t after adding a PRSS sharing of zero of degree 2t (as MPyC's
  random-bit generator does), so "multiply, then truncate" is one round, and the
  result r_hi-based is again of degree t (Gennaro–Rabin–Rabin resharing is not
  needed).
* ``reduce`` — degree reduction by resharing (Gennaro, Rabin & Rabin 1998).
* ``convert`` — move values to another prime field with one masked opening
  (the same PRSS mask is shared in both fields; as MPyC's ``convert``).
* ``less_than_zero`` — MPyC's ``np_sgn(..., LT=True)`` (bitwise comparison with
  statistical masking, Toft's variant).
* ``random_bits`` — MPyC's square-root method (one round, one opening and one
  modular square root per bit); ``pair_bits`` — for three parties, the XOR of the
  three pairwise PRSS bits (two rounds, three field elements sent per bit, no
  square root: ~2.3× less CPU; used by the GLMs' sign comparisons).

Every bound is checked against the field size: for an ℓ-bit value the opened
c < 2^(ℓ+κ+2) must stay below p.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

from services.lasso.core import wire

ObjectArray = npt.NDArray[np.object_]


def random_below(p: int, n: int) -> ObjectArray:
    """n uniform integers mod p (bias < 2^-64) from the OS CSPRNG (64-bit words, vectorised)."""
    words = -(-(p.bit_length() + 64) // 64)
    return _words_to_ints(os.urandom(8 * words * n), n, words, 64 * words) % p


def prf_words(key: bytes, uci: bytes, n: int, bits: int) -> ObjectArray:
    """n pseudorandom integers in [0, 2^bits): SHAKE-128(key ‖ uci ‖ bits), 64-bit words, top word masked."""
    if bits < 1:
        raise ValueError("need at least one bit")
    words = -(-bits // 64)
    stream = hashlib.shake_128(key + uci + bits.to_bytes(2, "little")).digest(8 * words * n)
    return _words_to_ints(stream, n, words, bits)


def _words_to_ints(stream: bytes, n: int, words: int, bits: int) -> ObjectArray:
    """n little-endian integers of ``words`` 64-bit words each from ``stream``, each masked to ``bits`` bits.

    Up to two words: numpy word arithmetic; wider: one ``int.from_bytes`` per value, which is
    ~3× faster than shifting and or-ing object arrays once per word.
    """
    top = bits - 64 * (words - 1)
    if words <= 2:
        raw = np.frombuffer(stream, dtype="<u8").reshape(n, words)
        out = (raw[:, words - 1] & np.uint64((1 << top) - 1)).astype(object)
        for w in range(words - 2, -1, -1):
            out = (out << 64) | raw[:, w].astype(object)
        return out
    size, mask, from_bytes = 8 * words, (1 << bits) - 1, int.from_bytes
    values = np.empty(n, dtype=object)
    values[:] = [from_bytes(stream[i : i + size], "little") & mask for i in range(0, size * n, size)]
    return values


class FieldOps:
    """Secure operations in the prime field of the MPyC secure type ``stype``."""

    def __init__(self, mpc: Any, stype: Any) -> None:
        from mpyc import asyncoro, thresha  # noqa: PLC0415  (mpyc is imported only once a runtime exists)

        self.mpc = mpc
        self.stype = stype
        self.field = stype.field
        self.p: int = int(self.field.modulus)
        self.bits = self.p.bit_length()
        self.width = wire.width_for(self.p)  # bytes per element on the wire
        self.parties = len(mpc.parties)
        self.t: int = mpc.threshold
        self.kappa: int = mpc.options.sec_param
        self.subsets = math.comb(self.parties, self.t)
        self._thresha = thresha
        # MPyC coroutines: each call gets its own program counter (message labels).
        self._output = asyncoro.mpc_coro(self._output_task)
        self._reshare = asyncoro.mpc_coro(self._reshare_task)
        self._pair_bits = asyncoro.mpc_coro(self._pair_bits_task)
        self._start = asyncoro.mpc_coro(self._start_task)
        self._recombination: dict[tuple[int, ...], list[int]] = {}
        self._pair_zero: dict[tuple[int, ...], int] = {}  # filled on first use (the PRSS keys exist after start)

    # ---- helpers -------------------------------------------------------------------------

    def capacity(self) -> int:
        """Largest ℓ such that ℓ-bit values can be masked and opened in this field."""
        return self.bits - self.kappa - 3

    def _check_bits(self, bits: int) -> None:
        if bits > self.capacity():
            raise OverflowError(f"{bits}-bit values exceed the field capacity {self.capacity()}")

    def public(self, values: npt.ArrayLike) -> ObjectArray:
        """Integers (possibly negative) as public 'shares' (a constant is its own sharing)."""
        arr = np.array(values, dtype=object)
        return arr % self.p

    def fixed(self, reals: npt.ArrayLike, frac: int) -> ObjectArray:
        """Public reals as fixed-point field values round(x·2^frac)."""
        arr = np.asarray(reals, dtype=np.float64)
        flat = np.empty(arr.size, dtype=object)
        for i, v in enumerate(arr.ravel()):
            flat[i] = round(float(v) * (1 << frac)) % self.p
        return flat.reshape(arr.shape)

    def signed(self, values: ObjectArray) -> ObjectArray:
        """Field values [0, p) → signed integers (−p/2, p/2]."""
        half = self.p // 2
        arr = np.asarray(values, dtype=object)
        return np.where(arr > half, arr - self.p, arr)

    def to_float(self, values: ObjectArray, frac: int) -> npt.NDArray[np.float64]:
        """Opened fixed-point values → float64."""
        signed = self.signed(values)
        out = np.array([float(v) for v in signed.ravel()], dtype=np.float64).reshape(signed.shape)
        return out / float(1 << frac)

    def _prss(self, n: int, bound: int, uci: bytes | None = None) -> ObjectArray:
        """Degree-t sharing of Σ_S F_S(uci), each F_S uniform in [0, bound) (bound = 2^b or p).

        PRSS (Cramer, Damgård, Ishai 2005) as MPyC's ``np_pseudorandom_share``,
        with the PRF outputs taken from one SHAKE-128 stream as 64-bit words
        (``prf_words``) instead of one ``int.from_bytes`` per value.
        """
        mpc = self.mpc
        uci = uci if uci is not None else mpc._prss_uci()
        exact = bound & (bound - 1) == 0
        bits = bound.bit_length() - 1 if exact else bound.bit_length() + 64
        total: Any = 0
        for subset, key in mpc._prss_keys.items():
            values = prf_words(key, uci, n, bits)
            if not exact and bound != self.p:  # (mod p, F_S ≡ F_S mod p: the final reduction does it)
                values = values % bound
            total = total + values * self._f_s(subset)
        return np.asarray(total % self.p, dtype=object).reshape(n)

    def _prss_split(self, n: int, low: int, bits: int) -> tuple[ObjectArray, ObjectArray]:
        """Degree-t sharings of r = Σ_S F_S and of r_hi = Σ_S ⌊F_S/2^low⌋, F_S uniform in [0, 2^bits).

        The same as r = r_lo + 2^low·r_hi from two ``_prss`` calls (r_lo of ``low`` bits, r_hi of
        ``bits − low``), with one PRF stream per subset instead of two.
        """
        mpc = self.mpc
        uci = mpc._prss_uci()
        total: Any = 0
        high: Any = 0
        for subset, key in mpc._prss_keys.items():
            values = prf_words(key, uci, n, bits)
            f_s = self._f_s(subset)
            total = total + values * f_s
            high = high + (values >> low) * f_s
        return np.asarray(total % self.p, dtype=object).reshape(n), np.asarray(high % self.p, dtype=object).reshape(n)

    def _prss_zero(self, n: int) -> ObjectArray:
        """Degree-2t sharing of zero: Σ_S f_S(i)·Σ_{j=1..t} F_S,j·(i+1)^j (as MPyC's).

        Three parties (t = 1): Σ_S c_S,i·F_S with small integers c (``_pair_zero_coefficients``)
        instead of field elements: the same sharings up to a public non-zero factor per subset,
        which leaves F_S's contribution uniform on its line, at half the CPU.
        """
        mpc = self.mpc
        uci = mpc._prss_uci()
        if self.parties == 3 and self.t == 1:
            if not self._pair_zero:
                self._pair_zero = self._pair_zero_coefficients()
            total: Any = 0
            for subset, key in mpc._prss_keys.items():
                values = prf_words(key, uci, n, self.bits + 64)
                coefficient = self._pair_zero[subset]
                total = total + (values if coefficient == 1 else values * coefficient)
            return np.asarray(total % self.p, dtype=object).reshape(n)
        total = np.zeros(n, dtype=object)
        x = mpc.pid + 1
        for subset, key in mpc._prss_keys.items():
            degree = self.parties - len(subset)
            if degree == 0:
                continue
            values = prf_words(key, uci, n * degree, self.bits + 64).reshape(n, degree)
            f_s = self._f_s(subset)
            for j in range(degree):  # F_S,j·(i+1)^j·f_S(i), reduced once at the end
                total = total + values[:, j] * (pow(x, j + 1) * f_s % self.p)
        return np.asarray(total % self.p, dtype=object)

    def _pair_zero_coefficients(self) -> dict[tuple[int, ...], int]:
        """Three parties, t = 1: this party's c_S for each pair S = (a, b) it is in, c_a = λ_b, c_b = −λ_a.

        λ = (3, −3, 1) recombines a degree-2 sharing at the points 1, 2, 3 (Lagrange at 0), so
        every pair's term F_S·(c_a at a, c_b at b, 0 elsewhere) is a sharing of zero; the pair a
        party is not in makes the other two shares uniform given the opened value (as MPyC's
        f_S(i)·(i+1), which is the same vector times a public non-zero factor).
        """
        lam = {0: 3, 1: -3, 2: 1}
        pid = self.mpc.pid
        out = {}
        for subset in self.mpc._prss_keys:
            a, b = subset
            out[subset] = lam[b] if pid == a else -lam[a]
        return out

    def _f_s(self, subset: tuple[int, ...]) -> int:
        """f_S(i): the degree-t polynomial with f_S(0) = 1 and f_S(j) = 0 outside S, at this party."""
        return self._least(int(self._thresha._f_S_i(self.field, self.parties, self.mpc.pid, subset)))

    def _field_array(self, values: ObjectArray) -> Any:
        """Wrap reduced values as an MPyC field array without its constructor's copy and checks."""
        array = object.__new__(self.field.array)
        array.value = np.ascontiguousarray(values.reshape(-1), dtype=object)
        return array

    def _decode(self, peer: int, data: bytes, count: int) -> ObjectArray:
        """A peer's message of `count` elements of this field (wire format; values < p)."""
        try:
            return wire.decode_field(data, self.p, count)
        except wire.PeerDataError:
            raise
        except wire.WireError as exc:
            raise wire.PeerDataError(peer, str(exc)) from None

    def _vector(self, xs: tuple[int, ...]) -> list[int]:
        """Lagrange coefficients for reconstructing f(0) from f at the points ``xs``."""
        if xs not in self._recombination:
            vector = self._thresha._recombination_vector(self.field, xs, 0)
            self._recombination[xs] = [self._least(int(v)) for v in vector]
        return self._recombination[xs]

    def _least(self, v: int) -> int:
        """v mod p as its representative of least absolute value: the Lagrange coefficients of few parties
        are small integers (3, −3, 1 for three points), and a product by one is cheaper than by p − 3."""
        v %= self.p
        return v - self.p if v > self.p >> 1 else v

    async def _output_task(self, values, threshold, receivers):  # type: ignore[no-untyped-def]
        # No annotations: MPyC's mpc_coro takes the first await as the placeholder's type.
        await self.mpc.returnType(asyncio.Future)
        return await self._output_shares(values, threshold, receivers)

    async def _reshare_task(self, values):  # type: ignore[no-untyped-def]
        await self.mpc.returnType(asyncio.Future)
        return await self._reshare_shares(values)

    def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``function(*args)`` concurrently with the caller as an MPyC coroutine; returns an awaitable.

        Its own program counter labels its messages the same on every party however its rounds
        interleave with the caller's (a plain asyncio task would take whichever label is current).
        """
        return self._start(function, args)

    async def _start_task(self, function, args):  # type: ignore[no-untyped-def]
        await self.mpc.returnType(asyncio.Future)
        return await function(*args)

    async def _output_shares(self, values: ObjectArray, threshold: int, receivers: list[int]) -> ObjectArray | None:
        """MPyC's ``output`` for one array of reduced values, without field-array objects.

        As ``mpyc.runtime.Runtime.output``: each party sends its share to the
        receivers among its ``threshold`` successors; a receiver recombines
        its own and ``threshold`` predecessors' shares (Lagrange at 0).
        """
        mpc = self.mpc
        m, pid = self.parties, mpc.pid
        payload = None
        for peer in receivers:
            if 0 < (peer - pid) % m <= threshold:
                payload = payload or wire.encode_ints(values, self.width)
                mpc._send_message(peer, payload)
        if pid not in receivers:
            return None
        await asyncio.sleep(0)  # openings started together send before any of them receives (one round)
        senders = [(pid - threshold + j) % m for j in range(threshold)]
        received = await mpc.gather([mpc._receive_message(peer) for peer in senders])
        vector = self._vector(tuple(peer + 1 for peer in senders) + (pid + 1,))
        total = values * vector[-1]
        for peer, coefficient, data in zip(senders, vector, received, strict=False):
            total = total + self._decode(peer, data, values.size) * coefficient
        return total % self.p

    async def _open(self, values: ObjectArray, threshold: int, receivers: Any = None) -> ObjectArray | None:
        shape = values.shape
        targets = list(range(self.parties)) if receivers is None else list(receivers)
        flat = np.ascontiguousarray(values.reshape(-1), dtype=object)
        opened = await self._output(flat, threshold, targets)
        if opened is None:
            return None
        return np.asarray(opened, dtype=object).reshape(shape)

    # ---- rounds ----------------------------------------------------------------------------

    async def trunc(self, x: ObjectArray, frac: int, bits: int, *, degree2t: bool = False) -> ObjectArray:
        """Degree-t sharing of ≈ x/2^frac, for signed values |x| < 2^(bits−1). One round."""
        self._check_bits(bits)
        if frac <= 0:
            return await self.reduce(x) if degree2t else x
        n = x.size
        mask, r_hi = self._prss_split(n, frac, self.kappa + bits)  # r_lo + 2^frac·r_hi, r_hi
        r_hi = r_hi.reshape(x.shape)
        masked = x + (1 << (bits - 1)) + mask.reshape(x.shape)
        if degree2t:
            masked = masked + self._prss_zero(n).reshape(x.shape)
        c = await self._open(masked % self.p, 2 * self.t if degree2t else self.t)
        assert c is not None
        bias = (self.subsets - 1) // 2 + (1 << (bits - 1 - frac))
        return ((c >> frac) - r_hi - bias) % self.p

    async def reduce(self, x: ObjectArray) -> ObjectArray:
        """Degree-2t sharing → degree-t sharing of the same values. One round.

        Gennaro–Rabin–Rabin resharing (as MPyC's ``_reshare``): parties
        0..2t Shamir-share their degree-2t shares with fresh randomness and
        everyone recombines the sub-shares with the Lagrange coefficients at 0.
        """
        if self.t == 0:
            return x % self.p
        flat = np.ascontiguousarray(x.reshape(-1) % self.p, dtype=object)
        return np.asarray(await self._reshare(flat), dtype=object).reshape(x.shape)

    async def _reshare_shares(self, values: ObjectArray) -> ObjectArray:
        """Resharing of degree-2t shares (one array) into degree-t shares."""
        mpc = self.mpc
        m, pid, t, p = self.parties, mpc.pid, self.t, self.p
        senders = list(range(2 * t + 1))
        own: ObjectArray = values
        if pid in senders:
            coefficients = [random_below(p, values.size) for _ in range(t)]
            for j in range(m):
                share = values.copy()
                for e, coefficient in enumerate(coefficients, start=1):
                    share = share + coefficient * pow(j + 1, e)
                share %= p
                if j == pid:
                    own = share
                else:
                    mpc._send_message(j, wire.encode_ints(share, self.width))
        await asyncio.sleep(0)  # as in _output_shares
        received = await mpc.gather([mpc._receive_message(i) for i in senders if i != pid])
        parts = iter(received)
        vector = self._vector(tuple(i + 1 for i in senders))
        total: ObjectArray = np.zeros(values.size, dtype=object)
        for i, weight in zip(senders, vector, strict=False):
            part: ObjectArray = self._decode(i, next(parts), values.size) if i != pid else own
            total = total + part * weight
        return total % p

    async def mul(self, a: ObjectArray, b: ObjectArray, frac: int, bits: int) -> ObjectArray:
        """Elementwise a·b/2^frac (broadcasting); |a·b| < 2^(bits−1). One round."""
        return await self.trunc(a * b, frac, bits, degree2t=True)

    async def matmul(self, a: ObjectArray, b: ObjectArray, frac: int, bits: int) -> ObjectArray:
        """(Batched) a @ b / 2^frac; every |entry of a @ b| < 2^(bits−1). One round."""
        return await self.trunc(np.matmul(a, b), frac, bits, degree2t=True)

    async def mul_exact(self, a: ObjectArray, b: ObjectArray) -> ObjectArray:
        """Elementwise a·b without truncation (e.g. bits times values). One round."""
        return await self.reduce(a * b)

    async def random_bits(self, n: int) -> ObjectArray:
        """Degree-t sharings of n uniform random bits. One round.

        MPyC's method (square-root trick): a PRSS random r, open r² (with a
        degree-2t zero sharing), then b = (r/√(r²) + 1)/2 with the principal
        square root (p ≡ 3 mod 4: 1/√a = a^((3p−5)/4)); r/√(r²) = ±1 is uniform.
        """
        p = self.p
        if p % 4 != 3:
            raise ValueError("random bits need a prime p ≡ 3 (mod 4)")
        r = self._prss(n, p)
        squares = await self._open((r * r + self._prss_zero(n)) % p, 2 * self.t)
        assert squares is not None
        if np.any(squares == 0):  # probability n/p: redraw the whole batch
            return await self.random_bits(n)
        roots = gmpy2.powmod_base_list([int(v) for v in squares], (3 * p - 5) >> 2, p)
        signs = r * np.array([int(v) for v in roots], dtype=object) % p
        return (signs + 1) * ((p + 1) >> 1) % p

    def pair_bits(self, n: int) -> Any:
        """Degree-t sharings of n uniform random bits in two rounds without an opening (three parties,
        t = 1; otherwise ``random_bits``). Returns an awaitable that is already running, so the caller
        can start it a round before it needs the bits.

        Each pair of parties {i, j} shares a PRSS key, hence pseudorandom bits b_ij; the bit is
        r = b₀₁ ⊕ b₀₂ ⊕ b₁₂, and any single party misses one of the three. Party 0 deals
        s = (−1)^(b₀₁ ⊕ b₀₂) as g(x) = s + γx with party 1's share g(x₁) pseudorandom from k₀₁ (so only
        party 2's share is sent, round 1). Parties 1 and 2 know σ = (−1)^b₁₂ and form h = σ·g + ζx
        (ζ from k₁₂: a fresh line through (0, sσ) = (0, (−1)^r)); party 0's share h(x₀) = σ·(λ₁g(x₁) +
        λ₂g(x₂)) + ζx₀ reaches it as two messages masked by ±m (m from k₁₂), so each alone, and their
        sum (masked by ζx₀), is uniform to it (round 2). Then r = (1 − h)/2. Semi-honest security
        against one party, as PRSS; no square roots (``random_bits`` opens r² and takes one per bit).
        """
        if self.parties != 3 or self.t != 1:
            return asyncio.ensure_future(self.random_bits(n))
        ucis = [self.mpc._prss_uci() for _ in range(4)]  # bits, g(x₁), ζ, m: the same on every party
        return self._pair_bits(n, ucis)

    async def _pair_bits_task(self, n, ucis):  # type: ignore[no-untyped-def]
        await self.mpc.returnType(asyncio.Future)
        return await self._pair_bits_shares(n, ucis)

    async def _pair_bits_shares(self, n: int, ucis: list[bytes]) -> ObjectArray:
        mpc, p, pid = self.mpc, self.p, self.mpc.pid
        keys = mpc._prss_keys
        wide = self.bits + 64
        u_bits, u_g, u_zeta, u_m = ucis
        inverse_two = (p + 1) >> 1
        x0, x1, x2 = 1, 2, 3  # evaluation points of parties 0, 1, 2; g(x₀) = 2g(x₁) − g(x₂)
        if pid == 0:
            a = prf_words(keys[(0, 1)], u_bits, n, 1) ^ prf_words(keys[(0, 2)], u_bits, n, 1)
            s = 1 - 2 * a  # ±1
            g1 = prf_words(keys[(0, 1)], u_g, n, wide) % p
            slope = (g1 - s) * pow(x1, -1, p) % p
            mpc._send_message(2, wire.encode_ints((s + slope * x2) % p, self.width))
            await asyncio.sleep(0)
            u1, u2 = await mpc.gather([mpc._receive_message(1), mpc._receive_message(2)])
            h = (self._decode(1, u1, n) + self._decode(2, u2, n)) % p
        else:
            sigma = 1 - 2 * prf_words(keys[(1, 2)], u_bits, n, 1)  # ±1
            zeta = prf_words(keys[(1, 2)], u_zeta, n, wide) % p
            m = prf_words(keys[(1, 2)], u_m, n, wide) % p
            if pid == 1:
                g = prf_words(keys[(0, 1)], u_g, n, wide) % p
                message = (2 * sigma * g + m) % p  # λ₁ = 2
                x = x1
            else:
                (dealt,) = await mpc.gather([mpc._receive_message(0)])  # bytes, or a future if not yet here
                g = self._decode(0, dealt, n)
                message = (zeta * x0 - sigma * g - m) % p  # λ₂ = −1
                x = x2
            mpc._send_message(0, wire.encode_ints(message, self.width))
            h = (sigma * g + zeta * x) % p
        bits: ObjectArray = (1 - h) * inverse_two % p
        return bits

    async def less_than_zero(self, x: ObjectArray, bits: int) -> ObjectArray:
        """0/1 sharings of [x < 0] for signed |x| < 2^(bits−1) (MPyC's secure comparison)."""
        self._check_bits(bits)
        mpc = self.mpc
        arr = self.stype.array(self._field_array(x % self.p))
        result = await mpc.gather(mpc.np_sgn(arr, l=bits, LT=True))
        scaled = np.asarray(result.value, dtype=object)
        inverse = pow(1 << self.stype.frac_length, -1, self.p)
        return (scaled * inverse % self.p).reshape(x.shape)

    async def convert(self, x: ObjectArray, target: FieldOps, bits: int, shift: int = 0) -> ObjectArray:
        """Sharings in ``target``'s field of x·2^shift (shift ≥ 0) for signed |x| < 2^(bits−1). One round."""
        self._check_bits(bits)
        target._check_bits(bits + shift)
        n = x.size
        uci = self.mpc._prss_uci()
        bound = 1 << (self.kappa + bits)
        r_src = self._prss(n, bound, uci).reshape(x.shape)
        r_dst = target._prss(n, bound, uci).reshape(x.shape)
        c = await self._open((x + (1 << (bits - 1)) + r_src) % self.p, self.t)
        assert c is not None
        value = (c - (1 << (bits - 1)) - r_dst) % target.p
        return (value << shift) % target.p if shift else value

    async def output(self, x: ObjectArray, receivers: list[int]) -> ObjectArray | None:
        """Open x (degree t) to ``receivers`` only; others get None."""
        return await self._open(x % self.p, self.t, receivers=receivers)

    async def output_product(self, x: ObjectArray, receivers: list[int]) -> ObjectArray | None:
        """Open x of degree ≤ 2t (e.g. an unrounded local product) to ``receivers`` only.

        A PRSS sharing of zero of degree 2t re-randomises the polynomial, so
        only the values are revealed.
        """
        masked = (x + self._prss_zero(x.size).reshape(x.shape)) % self.p
        return await self._open(masked, 2 * self.t, receivers=receivers)

    async def open(self, x: ObjectArray) -> ObjectArray:
        """Open x (degree t) to every party (used for public values only, e.g. in tests)."""
        opened = await self._open(x % self.p, self.t)
        assert opened is not None
        return opened
