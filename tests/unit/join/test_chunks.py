"""The one header-then-chunks assembler (services/join/core/chunks.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from riskmesh.v1 import join_pb2
from services.join.core.chunks import ChunkedRows, EndedEarly, read_header
from services.join.core.errors import WireFormatError


def header(rows: int) -> join_pb2.StoreHelperSharesRequest:
    return join_pb2.StoreHelperSharesRequest(header=join_pb2.SharesHeader(run_id="r", rows=rows))


def chunk(seq: int, rows: int) -> join_pb2.StoreHelperSharesRequest:
    return join_pb2.StoreHelperSharesRequest(chunk=join_pb2.SharesChunk(seq=seq, rows=rows))


def assemble(announced: int, messages: list[Any]) -> list[int]:
    rows: ChunkedRows[int] = ChunkedRows(announced)
    for message in messages:
        rows.add(range(rows.chunk(message).rows))
    return rows.finish()


async def stream(messages: list[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message


def test_rows_of_chunks_in_sequence_add_up_to_the_header() -> None:
    assert assemble(5, [chunk(0, 2), chunk(1, 3)]) == [0, 1, 0, 1, 2]
    assert assemble(0, []) == []


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([chunk(1, 2)], "chunk 1 out of order, 0 expected"),
        ([chunk(0, 2), chunk(0, 2)], "in sequence"),
        ([header(4)], "in sequence"),
        ([chunk(0, 5)], "more rows than the header announced"),
    ],
)
def test_chunks_out_of_place_or_too_many_rows_are_refused(messages: list[Any], fragment: str) -> None:
    with pytest.raises(WireFormatError, match=fragment):
        assemble(4, messages)


def test_a_stream_that_ends_early_says_how_far_it_got() -> None:
    with pytest.raises(EndedEarly, match="ended after 2 rows, its header says 4"):
        assemble(4, [chunk(0, 2)])


def test_the_header_comes_first() -> None:
    assert asyncio.run(read_header(stream([header(3), chunk(0, 3)]))).rows == 3
    with pytest.raises(WireFormatError, match="first message must be the header"):
        asyncio.run(read_header(stream([chunk(0, 3)])))
    with pytest.raises(WireFormatError, match="empty"):
        asyncio.run(read_header(stream([])))


def test_counted_rows_are_checked_but_not_kept() -> None:
    rows: ChunkedRows[None] = ChunkedRows(5)
    rows.count(len(range(rows.chunk(chunk(0, 3)).rows)))
    rows.count(2)
    assert rows.finish() == [] and rows.received == 5
    over: ChunkedRows[None] = ChunkedRows(2)
    with pytest.raises(WireFormatError):
        over.count(3)
    short: ChunkedRows[None] = ChunkedRows(2)
    short.count(1)
    with pytest.raises(EndedEarly):
        short.finish()
