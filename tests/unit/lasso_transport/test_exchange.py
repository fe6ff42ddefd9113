"""One stream's outbox: MPyC's order, then exactly one end."""

from __future__ import annotations

import asyncio

from riskmesh.v1 import lasso_pb2
from services.lasso.exchange import END, MAX_REASON_CHARS, Abort, Outbox


def drain(outbox: Outbox, n: int) -> list[object]:
    async def main() -> list[object]:
        return [await outbox.get() for _ in range(n)]

    return asyncio.run(main())


def test_messages_keep_their_order_and_nothing_follows_the_end():
    outbox = Outbox()
    outbox.put(3, b"a")
    outbox.put(-3, b"b")
    outbox.end()
    outbox.put(4, b"late")
    outbox.abort("too late to abort")
    items = drain(outbox, 3)
    assert [(m.pc, m.payload) for m in items[:2] if isinstance(m, lasso_pb2.MpcMessage)] == [(3, b"a"), (-3, b"b")]
    assert items[2] is END


def test_an_abort_ends_the_outbox_with_a_bounded_reason():
    outbox = Outbox()
    outbox.abort("x" * 10_000)
    outbox.end()
    (item,) = drain(outbox, 1)
    assert isinstance(item, Abort) and len(item.reason) == MAX_REASON_CHARS
