"""Fixtures of the join-core unit tests: session-scoped 1024-bit Paillier keys (fast)."""

from __future__ import annotations

import pytest

from services.join.core.paillier import PrivateKey, generate_keypair


@pytest.fixture(scope="session")
def key_a() -> PrivateKey:
    """Owner A's 1024-bit key pair."""
    return generate_keypair(1024)


@pytest.fixture(scope="session")
def key_b() -> PrivateKey:
    """Owner B's 1024-bit key pair."""
    return generate_keypair(1024)
