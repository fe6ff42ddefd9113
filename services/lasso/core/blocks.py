"""Share blocks: one party's additive shares of a run, and their wire form.

A party's input is one or more blocks of additive shares (docs/design.md, step 3): a block
is a header (columns, rows, value width, fixed-point layout) and row-major chunks of
little-endian two's complement integers (proto/riskmesh/v1/join.proto, GetShares).

`encode_block`/`decode_blocks` are how the resharing server's stream is read and also how
the lasso server hands the blocks to its MPC worker over the local link, so the worker
sees exactly what the resharing server sent. Nothing here logs or formats a share value;
errors name runs, columns and counts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from riskmesh.v1 import join_pb2
from services.join.core.chunks import ChunkedRows
from services.join.core.errors import JoinError, WireFormatError
from services.join.core.errors import SpecError as JoinSpecError
from services.join.core.shares import decode_shares, encode_shares

CHUNK_ROWS = 4096


class ShareError(ValueError):
    """Shares are missing or do not match their header."""


@dataclass(frozen=True)
class ShareBlock:
    """One block of this party's additive shares: `values[row][k]` belongs to `columns[k]`."""

    columns: tuple[str, ...]
    values: list[list[int]] = field(repr=False)
    value_bytes: int
    fractional_bits: int = 0
    value_bits: int = 0
    sigma_bits: int = 0

    def __post_init__(self) -> None:
        if not self.columns or self.value_bytes < 1:
            raise ShareError("a share block needs columns and a positive value width")
        if any(len(row) != len(self.columns) for row in self.values):
            raise ShareError("a share row does not match its block's columns")

    @property
    def rows(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:  # never print shares
        return f"ShareBlock(columns={self.columns!r}, rows={self.rows}, value_bytes={self.value_bytes})"


def encode_values(rows: Sequence[Sequence[int]], width: int) -> bytes:
    try:
        return encode_shares(rows, width)
    except JoinSpecError as exc:
        raise ShareError(str(exc)) from None


def decode_values(data: bytes, columns: int, width: int) -> list[list[int]]:
    try:
        return decode_shares(data, columns, width)
    except WireFormatError as exc:
        raise ShareError(str(exc)) from None


def encode_block(run_id: str, block: ShareBlock, chunk_rows: int = CHUNK_ROWS) -> Iterator[join_pb2.GetSharesResponse]:
    """A header, then chunks of at most `chunk_rows` rows."""
    layout = join_pb2.SlotLayout(
        fractional_bits=block.fractional_bits, value_bits=block.value_bits, sigma_bits=block.sigma_bits
    )
    header = join_pb2.SharesHeader(
        run_id=run_id, rows=block.rows, columns=block.columns, value_bytes=block.value_bytes, layout=layout
    )
    yield join_pb2.GetSharesResponse(header=header)
    for seq, start in enumerate(range(0, block.rows, chunk_rows)):
        rows = block.values[start : start + chunk_rows]
        yield join_pb2.GetSharesResponse(
            chunk=join_pb2.SharesChunk(seq=seq, rows=len(rows), values=encode_values(rows, block.value_bytes))
        )


class BlockDecoder:
    """Checks and assembles a stream of GetSharesResponse messages into blocks (each a
    header, then its chunks: services/join/core/chunks.py)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.blocks: list[ShareBlock] = []
        self._header: join_pb2.SharesHeader | None = None
        self._rows: ChunkedRows[list[int]] = ChunkedRows(0)

    def feed(self, message: join_pb2.GetSharesResponse) -> None:
        if message.HasField("header"):
            self._finish_block()
            header = message.header
            if header.run_id != self.run_id:
                raise ShareError(f"shares are for another run than {self.run_id!r}")
            if not header.columns or header.value_bytes < 1:
                raise ShareError("a share header needs columns and a positive value width")
            self._header = header
            self._rows = ChunkedRows(header.rows)
        elif message.HasField("chunk"):
            if self._header is None:
                raise ShareError("a share chunk came before its header")
            try:
                chunk = self._rows.chunk(message)
                values = decode_values(chunk.values, len(self._header.columns), self._header.value_bytes)
                if len(values) != chunk.rows:
                    raise ShareError(f"share chunk {chunk.seq} holds {len(values)} rows, says {chunk.rows}")
                self._rows.add(values)
            except JoinError as exc:
                raise ShareError(str(exc)) from None
        else:
            raise ShareError("an empty shares message")

    def _finish_block(self) -> None:
        header = self._header
        if header is None:
            return
        try:
            values = self._rows.finish()
        except JoinError as exc:
            raise ShareError(f"the share block of columns {list(header.columns)}: {exc}") from None
        layout = header.layout
        self.blocks.append(
            ShareBlock(
                tuple(header.columns),
                values,
                header.value_bytes,
                layout.fractional_bits,
                layout.value_bits,
                layout.sigma_bits,
            )
        )
        self._header = None

    def finish(self) -> list[ShareBlock]:
        self._finish_block()
        if not self.blocks:
            raise ShareError(f"no shares for run {self.run_id!r}")
        rows = {block.rows for block in self.blocks}
        if len(rows) != 1:
            raise ShareError("the share blocks of a run differ in their number of rows")
        return self.blocks


def decode_blocks(run_id: str, messages: Iterable[join_pb2.GetSharesResponse]) -> list[ShareBlock]:
    decoder = BlockDecoder(run_id)
    for message in messages:
        decoder.feed(message)
    return decoder.finish()
