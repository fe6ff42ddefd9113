"""Streams of a header, then numbered chunks of rows: the one assembler of every such stream.

The join's uploads and deliveries and the lasso server's GetShares (proto/riskmesh/v1/
join.proto) all send one message with a `header` (which announces the rows) and then
messages with a `chunk` numbered 0, 1, 2, ...; the rows of the chunks must add up to the
announced count, no more and no fewer. `read_header` takes the header off the front of
a stream, `ChunkedRows` checks the chunks that follow and collects their rows. How a
chunk's bytes become rows is the caller's (decryption, share decoding, ...), and so is
what an error becomes (a status code, a ShareError). Messages name counts only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Generic, TypeVar

from services.join.core.errors import WireFormatError

R = TypeVar("R")


class EndedEarly(WireFormatError):
    """The stream ended before every announced row arrived."""


async def read_header(stream: AsyncIterator[Any]) -> Any:
    """The header a stream must start with."""
    first = await anext(stream, None)
    if first is None:
        raise WireFormatError("the stream is empty")
    if not first.HasField("header"):
        raise WireFormatError("the first message must be the header")
    return first.header


class ChunkedRows(Generic[R]):
    """The rows announced by one header, from the chunks that follow it.

    For each message: `chunk(message)` checks it is the next chunk and returns it, the
    caller decodes it and hands its rows to `add` — or, when it keeps them elsewhere (a
    spool file, encoded bytes), their number to `count`; `finish()` at the end of the block.
    """

    def __init__(self, announced: int) -> None:
        self.announced = announced
        self.rows: list[R] = []
        self.received = 0
        self._next_seq = 0

    def chunk(self, message: Any) -> Any:
        """The message's chunk, if it is the next one in sequence."""
        if not message.HasField("chunk"):
            raise WireFormatError("chunks must follow the header in sequence")
        seq = message.chunk.seq
        if seq != self._next_seq:
            raise WireFormatError(
                f"chunks must follow the header in sequence (chunk {seq} out of order, {self._next_seq} expected)"
            )
        self._next_seq += 1
        return message.chunk

    def add(self, rows: Iterable[R]) -> None:
        before = len(self.rows)
        self.rows.extend(rows)
        self.count(len(self.rows) - before)

    def count(self, n: int) -> None:
        """`n` more rows arrived (kept by the caller)."""
        self.received += n
        if self.received > self.announced:
            raise WireFormatError("more rows than the header announced")

    def finish(self) -> list[R]:
        """Every announced row that was `add`ed (EndedEarly if some are missing)."""
        if self.received != self.announced:
            raise EndedEarly(f"the stream ended after {self.received} rows, its header says {self.announced}")
        return self.rows
