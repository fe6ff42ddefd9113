"""Share blocks on the wire (GetShares) and the injected sources."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from riskmesh.v1 import join_pb2
from services.lasso.core.blocks import BlockDecoder, ShareBlock, ShareError, decode_blocks, encode_block
from services.lasso.shares import InMemoryShareSource, ShareSourceError

BIG = 2**104 - 1


def block(columns: tuple[str, ...], rows: int, sign: int = 1) -> ShareBlock:
    values = [[sign * (BIG - 7 * r - k) for k in range(len(columns))] for r in range(rows)]
    return ShareBlock(columns, values, 14, 32, 64, 40)


def test_blocks_round_trip_through_chunks():
    blocks = [block(("a", "b"), 10), block(("c",), 10, sign=-1)]
    messages = [m for b in blocks for m in encode_block("run-1", b, chunk_rows=3)]
    assert sum(m.HasField("chunk") for m in messages) == 8
    decoded = decode_blocks("run-1", messages)
    assert [(d.columns, d.values, d.value_bytes, d.value_bits) for d in decoded] == [
        (b.columns, b.values, b.value_bytes, b.value_bits) for b in blocks
    ]


def test_repr_shows_shape_not_values():
    assert str(BIG) not in repr(block(("a",), 2))


def test_header_of_another_run_is_refused():
    message = next(encode_block("run-2", block(("a",), 1)))
    with pytest.raises(ShareError, match="another run"):
        BlockDecoder("run-1").feed(message)


def test_chunks_out_of_order_are_refused():
    messages = list(encode_block("run-1", block(("a",), 4), chunk_rows=2))
    decoder = BlockDecoder("run-1")
    decoder.feed(messages[0])
    with pytest.raises(ShareError, match="out of order"):
        decoder.feed(messages[2])


def test_missing_rows_are_refused():
    messages = list(encode_block("run-1", block(("a",), 4), chunk_rows=2))[:-1]
    with pytest.raises(ShareError, match="header says 4"):
        decode_blocks("run-1", messages)


def test_a_chunk_before_any_header_is_refused():
    with pytest.raises(ShareError, match="before its header"):
        BlockDecoder("run-1").feed(join_pb2.GetSharesResponse(chunk=join_pb2.SharesChunk(seq=0, rows=0)))


def test_no_shares_at_all_is_refused():
    with pytest.raises(ShareError, match="no shares"):
        decode_blocks("run-1", [])


def test_blocks_must_agree_on_rows():
    messages = [*encode_block("run-1", block(("a",), 2)), *encode_block("run-1", block(("b",), 3))]
    with pytest.raises(ShareError, match="differ"):
        decode_blocks("run-1", messages)


def test_in_memory_source():
    source = InMemoryShareSource({"run-1": [block(("a",), 2)]})
    assert asyncio.run(source.fetch("run-1"))[0].rows == 2
    with pytest.raises(ShareSourceError) as err:
        asyncio.run(source.fetch("run-9"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
