"""Small pieces the three join servers share: join errors → status codes, chunking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import grpc

from services.join.core.errors import (
    DataError,
    IntersectionTooSmallError,
    JoinError,
    KeySizeError,
    SpecError,
    WireFormatError,
)
from services.mesh.status import mapped_errors, status_of
from services.study.spec import SpecError as StudySpecError

T = TypeVar("T")

CHUNK_ROWS = 1000  # rows per streamed message: ~0.5 MB of 2048-bit ciphertexts


def chunked(items: Sequence[T], size: int = CHUNK_ROWS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Join domain errors → status codes (messages never carry patient data); any other JoinError is INTERNAL.
JOIN_STATUSES = (
    (DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (WireFormatError, grpc.StatusCode.INVALID_ARGUMENT),
    (StudySpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (IntersectionTooSmallError, grpc.StatusCode.FAILED_PRECONDITION),
    (KeySizeError, grpc.StatusCode.FAILED_PRECONDITION),
    (JoinError, grpc.StatusCode.INTERNAL),
)


def status_for(exc: JoinError | StudySpecError) -> grpc.StatusCode:
    """The status code of a join domain error."""
    return status_of(exc, JOIN_STATUSES) or grpc.StatusCode.INTERNAL


def join_errors(context: grpc.aio.ServicerContext, phase: str) -> AbstractAsyncContextManager[None]:
    """Abort the RPC with the phase and the reason of a join error."""
    return mapped_errors(context, JOIN_STATUSES, prefix=f"{phase}: ")
