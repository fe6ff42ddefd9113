"""The offline pool is made piece by piece, so that dropping it stops the work after the current
piece (docs/adr/0013-offline-keys-and-pools.md), and its pieces add up to the count asked for."""

from __future__ import annotations

import asyncio

import pytest

from services.join import encryption_server
from services.join.core.paillier import RandomnessPool, generate_keypair

KEY = generate_keypair(1024).public


def test_pieces_add_up_to_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []

    async def make_pool(crypto, executor, workers, key, count, window):  # type: ignore[no-untyped-def]
        sizes.append(count)
        return RandomnessPool(key.key_id, range(1, count + 1))

    monkeypatch.setattr(encryption_server, "make_pool", make_pool)
    pool = asyncio.run(encryption_server.make_offline_pool(None, None, 1, KEY, 4_500, None))
    assert sizes == [2_000, 2_000, 500] and len(pool) == 4_500 and pool.key_id == KEY.key_id


def test_a_dropped_pool_stops_after_the_current_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def make_pool(crypto, executor, workers, key, count, window):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return RandomnessPool(key.key_id, range(1, count + 1))

    monkeypatch.setattr(encryption_server, "make_pool", make_pool)

    async def scenario() -> None:
        task = asyncio.ensure_future(encryption_server.make_offline_pool(None, None, 1, KEY, 100_000, None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert calls == 1  # 50 pieces asked for; only the first began


def test_the_pool_preloads_the_servers_own_module() -> None:
    """The fork server preloads SERVER_MODULE so that pool workers find it imported: it must name this module."""
    assert encryption_server.SERVER_MODULE == encryption_server.__name__
