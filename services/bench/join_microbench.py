"""Microbenchmark of the join core's operations, and an estimate for a whole join.

Run: ``python -m services.bench.join_microbench [--bits 3072] [--rows 10000]``.

Measures, on synthetic data (no files, no network): key generation, one pool
element (window table build + per-element products; single process and over
worker processes), per-row owner work (tag, encode, pack, encrypt), helper
masking, owner decryption (CRT, p-only, p-only over threads) and share
encoding. Two lines are for comparison only (not what the join does): one modular product
modulo N² (a pool element is ⌈t/w⌉ − 1 of them), and a pool element as the *key owner* could
make it, by CRT modulo p² and q² with r reduced modulo the subgroup's order (exactly uniform
in ⟨h_s⟩) — the cost of the option in services/join/core/README.md, "Performance notes".
Then estimates a join of ``rows`` rows per owner with ``overlap``
of them shared: total CPU seconds per phase, and the wall time if the work
spread perfectly over ``cores`` cores. Samples are small on purpose (the
machine is shared). Single-process operations are timed in CPU seconds of this
process (``time.process_time``), so other load on the machine barely moves them;
the lines marked "wall" (worker processes, threads) are wall-clock and noisy.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from services.join.core import fixedpoint
from services.join.core.columns import ColumnSpec
from services.join.core.keys import TagKey, tags
from services.join.core.masking import mask_rows
from services.join.core.packing import SlotLayout, pack_rows
from services.join.core.paillier import (
    DEFAULT_MODULUS_BITS,
    FixedBaseTable,
    PrivateKey,
    choose_window_bits,
    decrypt_many,
    encrypt_rows,
    generate_keypair,
    generate_pool,
)
from services.join.core.parallel import default_workers, process_executor
from services.join.core.shares import encode_shares, value_bytes

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Result and CPU seconds of this process (single-process work)."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def _wall(fn: Callable[[], T]) -> tuple[T, float]:
    """Result and wall-clock seconds (work spread over threads or processes)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class KeyOwnerPool:
    """For comparison only: ρ = h_s^r as the key owner could make it, knowing p, q, a_p and a_q.

    Modulo p², h_s has order dividing 2·a_p (2κ + 1 bits), so h_s^r mod p² = h_s^(r mod 2a_p);
    likewise modulo q². Drawing r_p < 2a_p and r_q < 2a_q uniformly with r_p ≡ r_q (mod 2) (the
    condition for a common r modulo lcm(2a_p, 2a_q) = 2α) gives ρ = h_s^r for r uniform modulo
    2α: a 257-bit fixed-base exponentiation modulo each 3,072-bit p², q², then CRT."""

    def __init__(self, key: PrivateKey, window_bits: int) -> None:
        self.p2, self.q2 = key.p * key.p, key.q * key.q
        self.orders = 2 * key.a_p, 2 * key.a_q
        h_s = key.public.h_s
        self.tables = [
            FixedBaseTable(h_s % m, m, order.bit_length(), window_bits)
            for m, order in zip((self.p2, self.q2), self.orders, strict=True)
        ]
        self.p2_inv = pow(self.p2, -1, self.q2)

    def exponents(self) -> tuple[int, int]:
        """r mod 2·a_p and r mod 2·a_q of an r uniform modulo 2α (hence of equal parity)."""
        r_p = secrets.randbelow(self.orders[0])
        return r_p, secrets.randbelow(self.orders[1] // 2) * 2 + r_p % 2

    def element_for(self, r_p: int, r_q: int) -> int:
        """h_s^r mod N² for the r with these residues modulo 2·a_p and 2·a_q."""
        a, b = (int(t.power(r)) for t, r in zip(self.tables, (r_p, r_q), strict=True))
        return a + self.p2 * ((b - a) * self.p2_inv % self.q2)

    def element(self) -> int:
        return self.element_for(*self.exponents())


def _line(name: str, seconds: float, unit: str = "") -> None:
    if seconds < 1e-3:
        shown = f"{seconds * 1e6:9.1f} µs"
    elif seconds < 1:
        shown = f"{seconds * 1e3:9.2f} ms"
    else:
        shown = f"{seconds:9.2f} s "
    print(f"  {name:<44}{shown} {unit}")


def run(bits: int, rows: int, columns: int, overlap: float, samples: int, cores: int) -> None:
    """Measure and print (see the module docstring)."""
    print(
        f"join core microbench: {bits}-bit Paillier, {columns} values/row, {samples} samples, {cores} cores "
        "(CPU time unless marked wall)"
    )
    keys, t_keygen = _timed(lambda: [generate_keypair(bits) for _ in range(3)])
    key = keys[0]
    pk = key.public
    t_keygen /= 3
    _line("keygen (one key pair)", t_keygen)

    per_worker = -(-rows // cores)
    exponent = pk.exponent_bits
    window = choose_window_bits(per_worker, exponent, int(pk.n2).bit_length())
    table, t_table = _timed(lambda: FixedBaseTable(pk.h_s, pk.n2, exponent, window))
    exps = [secrets.randbits(exponent) for _ in range(samples)]
    _, t = _timed(lambda: [table.power(e) for e in exps])
    t_elem = t / samples
    _line(f"pool: window table build (w = {window})", t_table)
    _line(f"pool: one element h_s^r, r of {exponent} bits", t_elem)
    a, b = table.power(exps[0]), table.power(exps[1])
    _, t_product = _timed(lambda: [a * b % table.modulus for _ in range(samples)])
    _line(f"pool: one product modulo N² ({int(pk.n2).bit_length()} bits)", t_product / samples)
    owner_pool = KeyOwnerPool(key, window)
    _, t_owner = _timed(lambda: [owner_pool.element() for _ in range(samples)])
    _line("pool: one element by the key owner (CRT; comparison)", t_owner / samples)
    par_count = min(rows, 2000)
    with process_executor(cores) as executor:
        _, t_start = _wall(lambda: list(executor.map(abs, range(cores))))
        _, t_par = _wall(lambda: generate_pool(pk, par_count, executor=executor, parts=cores))
    _line(f"pool: start {cores} worker processes (wall)", t_start)
    _line(
        f"pool: {par_count} elements over {cores} processes (wall)", t_par, f"({t_par / par_count * 1e3:.3f} ms/elem)"
    )

    layout = SlotLayout.for_columns(columns, bits)
    cols = [ColumnSpec(f"c{k}", -1000, 1000) for k in range(columns)]
    values = np.random.default_rng().uniform(-1000, 1000, size=(samples, columns))
    ids = [f"1970-01-{1 + k % 28:02d}|{1000 + k}AB" for k in range(samples)]
    tag_key = TagKey(secrets.token_bytes(32))
    pool = generate_pool(pk, samples * layout.ciphertexts_per_row * 2)
    _, t_tag = _timed(lambda: tags(tag_key, ids))
    packed, t_pack = _timed(lambda: pack_rows(layout, fixedpoint.encode(values, cols, layout.fixed_point)))
    cts, t_enc = _timed(lambda: encrypt_rows(pk, packed, pool))
    masked, t_mask = _timed(lambda: mask_rows(pk, layout, cts, columns))
    flat = [c for row in masked.ciphertexts for c in row]
    _, t_crt = _timed(lambda: decrypt_many(key, flat))
    _, t_p = _timed(lambda: decrypt_many(key, flat, below_p=True))
    _, t_pt = _wall(lambda: decrypt_many(key, flat, below_p=True, threads=cores))
    width = value_bytes(layout)
    _, t_wire = _timed(lambda: encode_shares(masked.helper_shares, width))
    n = samples
    _line("owner: tag (HMAC-SHA256) per row", t_tag / n)
    _line("owner: encode + pack per row", t_pack / n)
    _line(f"owner: encrypt per row ({layout.ciphertexts_per_row} ciphertext(s))", t_enc / n)
    _line("helper: mask per row", t_mask / n)
    _line("owner: decrypt CRT per ciphertext", t_crt / len(flat))
    _line("owner: decrypt p-only per ciphertext", t_p / len(flat))
    _line(f"owner: decrypt p-only, {cores} threads (wall, effective)", t_pt / len(flat))
    _line("shares: encode per row", t_wire / n)

    joined = int(rows * overlap)
    per_row_cts = layout.ciphertexts_per_row
    phases = {
        "keygen (2 owners)": 2 * t_keygen,
        "pool (2 owners, tables per core)": 2 * (rows * per_row_cts * t_elem + cores * t_table),
        "tag + encode + pack + encrypt (2 owners)": 2 * rows * (t_tag + t_pack + t_enc) / n,
        "helper masking (both directions)": 2 * joined * t_mask / n,
        "decrypt p-only (2 owners)": 2 * joined * per_row_cts * t_p / len(flat),
        "share encoding (3 parties)": 3 * joined * t_wire / n,
    }
    total = sum(phases.values())
    print(f"estimate: {rows} rows per owner, {columns} values, {joined} joined ({overlap:.0%} overlap)")
    for name, seconds in phases.items():
        _line(f"CPU {name}", seconds)
    _line("CPU total", total)
    _line(f"wall if spread perfectly over {cores} cores", total / cores, "(no network, no gRPC)")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bits", type=int, default=DEFAULT_MODULUS_BITS, help=f"Paillier modulus bits (default {DEFAULT_MODULUS_BITS})"
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows per owner for the estimate")
    parser.add_argument("--columns", type=int, default=5, help="values per row")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of rows in the join")
    parser.add_argument("--samples", type=int, default=200, help="rows measured per operation")
    parser.add_argument("--cores", type=int, default=min(2, default_workers()), help="cores to use")
    args = parser.parse_args(argv)
    run(args.bits, args.rows, args.columns, args.overlap, args.samples, args.cores)


if __name__ == "__main__":
    main()
