"""Small pieces the three join servers share: run-state errors → status codes,
progress messages, chunking."""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Iterator, Sequence, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from riskmesh.v1 import common_pb2
from services.join.core.errors import DataError, IntersectionTooSmallError, JoinError, KeySizeError, SpecError, WireFormatError

T = TypeVar("T")

CHUNK_ROWS = 1000  # rows per streamed message: ~0.5 MB of 2048-bit ciphertexts


def chunked(items: Sequence[T], size: int = CHUNK_ROWS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def progress(run_id: str, org: str, phase: int, done: int = 0, total: int = 0, message: str = "", state: int = common_pb2.RUN_STATE_RUNNING) -> common_pb2.Progress:
    at = Timestamp()
    at.FromNanoseconds(time.time_ns())
    return common_pb2.Progress(run_id=run_id, phase=phase, org=org, done=done, total=total, state=state, message=message, at=at)


def status_for(exc: Exception) -> grpc.StatusCode:
    """The status code of a join domain error (messages never carry patient data)."""
    if isinstance(exc, (DataError, SpecError, WireFormatError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, (IntersectionTooSmallError, KeySizeError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


@contextlib.asynccontextmanager
async def join_errors(context: grpc.aio.ServicerContext, phase: str) -> AsyncIterator[None]:
    """Abort the RPC with the phase and the reason of a join error."""
    try:
        yield
    except JoinError as exc:
        await context.abort(status_for(exc), f"{phase}: {exc}")


class RunNotFound(Exception):
    pass
