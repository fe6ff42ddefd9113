"""The microbench's key-owner pool (a comparison line): it must compute h_s^r for r uniform modulo 2α."""

from __future__ import annotations

import secrets

from services.bench.join_microbench import KeyOwnerPool
from services.join.core.paillier import generate_keypair


def test_key_owner_pool_is_h_s_to_a_uniform_exponent() -> None:
    key = generate_keypair(1024)
    pool = KeyOwnerPool(key, window_bits=5)
    n2, order = key.public.n * key.public.n, 2 * key.a_p * key.a_q
    for _ in range(5):  # any r modulo 2α, through its residues
        r = secrets.randbelow(order)
        assert pool.element_for(r % (2 * key.a_p), r % (2 * key.a_q)) == pow(key.public.h_s, r, n2)
    for _ in range(20):  # the drawn residues always have a common r (equal parity)
        r_p, r_q = pool.exponents()
        assert 0 <= r_p < 2 * key.a_p and 0 <= r_q < 2 * key.a_q and r_p % 2 == r_q % 2
    elements = [pool.element() for _ in range(20)]
    assert len(set(elements)) == 20 and all(key.decrypt(rho) == 0 for rho in elements)
