"""LassoService.Exchange streams between two lasso servers: dialling, accepting, relaying.

One bidirectional stream per pair of parties (MPyC's topology: party i accepts the
parties below it and dials those above). The dialer's first frame is an MpcHello with
the run, its party id and its PRSS keys for the acceptor; the acceptor has checked that
id against the caller's certificate before `accept` is called (servicer).

grpc.aio allows one outstanding `write()` per stream, while MPyC's `send` is
synchronous and comes in bursts: each stream has one `Outbox` queue and exactly one
writer (a task on the dialing side, the response generator on the accepting side).

How a stream ends is explicit, because grpc.aio cannot tell the acceptor whether a
request stream ended by the dialer's half-close or by its crash (a killed client's
request iterator ends normally; the handler is cancelled only afterwards):
- dialer → acceptor: the last frame is an MpcEnd — empty for MPyC's clean close, with a
  reason when the dialer's run failed; a stream that ends without it was lost;
- acceptor → dialer: status OK after the dialer's clean end; ABORTED with the reason
  when the acceptor's run failed; anything else means the acceptor was lost.
The owning run hears `peer_closed` (MPyC's shutdown), `peer_ended` (the peer's run
failed, with its reason) or `peer_lost` (with the status code) — once per stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc

from riskmesh.v1 import lasso_pb2, lasso_pb2_grpc

MAX_REASON_CHARS = 500


class StreamOwner(Protocol):
    """The run a stream belongs to (services.lasso.runs.Run)."""

    run_id: str
    pid: int

    def deliver(self, peer: int, pc: int, payload: bytes) -> None: ...

    async def writable(self) -> None:
        """Return when the run can take the next message (backpressure toward the peer)."""
        ...

    def peer_up(self, peer: int, prss_keys: bytes) -> None: ...

    def peer_closed(self, peer: int) -> None: ...

    def peer_ended(self, peer: int, reason: str) -> None: ...

    def peer_lost(self, peer: int, code: grpc.StatusCode, details: str) -> None: ...


class _End:
    pass


END = _End()


@dataclass(frozen=True)
class Abort:
    reason: str


OutboxItem = lasso_pb2.MpcMessage | _End | Abort


class Outbox:
    """Messages for one peer, in MPyC's order, then END (clean close) or an Abort."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[OutboxItem] = asyncio.Queue()
        self._finished = False

    def put(self, pc: int, payload: bytes) -> None:
        if not self._finished:
            self._queue.put_nowait(lasso_pb2.MpcMessage(pc=pc, payload=payload))

    def end(self) -> None:
        if not self._finished:
            self._finished = True
            self._queue.put_nowait(END)

    def abort(self, reason: str) -> None:
        if not self._finished:
            self._finished = True
            self._queue.put_nowait(Abort(reason[:MAX_REASON_CHARS]))

    async def get(self) -> OutboxItem:
        return await self._queue.get()


def status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


# Dialling side ----------------------------------------------------------------------------


async def dial(
    owner: StreamOwner,
    peer: int,
    prss_keys: bytes,
    channel: grpc.aio.Channel,
    outbox: Outbox,
    metadata: Sequence[tuple[str, str]] = (),
) -> None:
    """Open the stream to party `peer`, say hello, then relay both ways until it ends."""
    stub = lasso_pb2_grpc.LassoServiceStub(channel)
    await channel.channel_ready()
    call = stub.Exchange(metadata=tuple(metadata), wait_for_ready=True)
    writer: asyncio.Task[None] | None = None
    try:
        await call.write(
            lasso_pb2.ExchangeRequest(hello=lasso_pb2.MpcHello(run_id=owner.run_id, pid=owner.pid, prss_keys=prss_keys))
        )
        owner.peer_up(peer, b"")
        writer = asyncio.create_task(_write_requests(call, outbox))
        async for response in call:
            owner.deliver(peer, response.message.pc, response.message.payload)
            await owner.writable()
    except asyncio.CancelledError:
        call.cancel()
        raise
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.ABORTED:
            owner.peer_ended(peer, (exc.details() or "")[:MAX_REASON_CHARS])
        else:
            owner.peer_lost(peer, exc.code(), (exc.details() or "")[:MAX_REASON_CHARS])
        return
    except Exception as exc:
        owner.peer_lost(peer, status_of(exc), "")
        return
    finally:
        if writer is not None and not writer.done():
            writer.cancel()
    owner.peer_closed(peer)


async def _write_requests(call: grpc.aio.StreamStreamCall, outbox: Outbox) -> None:
    """The one writer of a dialled stream; ends with an MpcEnd (errors surface on the read side)."""
    try:
        while True:
            item = await outbox.get()
            if isinstance(item, lasso_pb2.MpcMessage):
                await call.write(lasso_pb2.ExchangeRequest(message=item))
                continue
            reason = item.reason if isinstance(item, Abort) else ""
            await call.write(lasso_pb2.ExchangeRequest(end=lasso_pb2.MpcEnd(abort_reason=reason)))
            await call.done_writing()
            return
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
        return


# Accepting side ---------------------------------------------------------------------------


async def accept(
    owner: StreamOwner,
    peer: int,
    prss_keys: bytes,
    requests: AsyncIterator[lasso_pb2.ExchangeRequest],
    context: grpc.aio.ServicerContext,
    outbox: Outbox,
) -> AsyncIterator[lasso_pb2.ExchangeResponse]:
    """The acceptor's side of a stream whose hello was checked: yields MPyC's messages to the dialer."""
    owner.peer_up(peer, prss_keys)
    reader = asyncio.create_task(_read_requests(owner, peer, requests, outbox))
    clean = False
    try:
        while True:
            item = await outbox.get()
            if isinstance(item, _End):
                clean = True
                return
            if isinstance(item, Abort):
                await context.abort(grpc.StatusCode.ABORTED, item.reason)
            assert isinstance(item, lasso_pb2.MpcMessage)
            yield lasso_pb2.ExchangeResponse(message=item)
    finally:
        if not reader.done():
            reader.cancel()
        if not clean:
            owner.peer_lost(peer, grpc.StatusCode.CANCELLED, "")


async def _read_requests(
    owner: StreamOwner, peer: int, requests: AsyncIterator[lasso_pb2.ExchangeRequest], outbox: Outbox
) -> None:
    try:
        async for request in requests:
            kind = request.WhichOneof("item")
            if kind == "message":
                owner.deliver(peer, request.message.pc, request.message.payload)
                await owner.writable()
            elif kind == "end" and request.end.abort_reason:
                owner.peer_ended(peer, request.end.abort_reason[:MAX_REASON_CHARS])
                return
            elif kind == "end":
                owner.peer_closed(peer)
                outbox.end()
                return
            else:
                owner.peer_lost(peer, grpc.StatusCode.INTERNAL, "")  # a second hello
                return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        owner.peer_lost(peer, status_of(exc), "")
        return
    owner.peer_lost(peer, grpc.StatusCode.CANCELLED, "")  # ended without an MpcEnd
