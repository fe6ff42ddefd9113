"""Domain errors of the gateway's cores → gRPC status codes (one table, used by the servicer)."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Callable

import grpc

from services.gateway.audit import AuditError
from services.gateway.predict import PredictError
from services.study.spec import SpecError
from services.gateway.store import (
    DuplicateRunError,
    IllegalTransitionError,
    InvalidValueError,
    NotApprovedError,
    NotAPartyError,
    StaleDigestError,
    UnknownRunError,
    UnknownStudyError,
)


class RequestError(Exception):
    """A refusal decided by the servicer itself, with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


STATUS_OF = (
    (RequestError, None),
    (UnknownStudyError, grpc.StatusCode.NOT_FOUND),
    (UnknownRunError, grpc.StatusCode.NOT_FOUND),
    (StaleDigestError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotApprovedError, grpc.StatusCode.FAILED_PRECONDITION),
    (IllegalTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (DuplicateRunError, grpc.StatusCode.ALREADY_EXISTS),
    (NotAPartyError, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (PredictError, grpc.StatusCode.INVALID_ARGUMENT),
    (AuditError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_of(exc: Exception) -> grpc.StatusCode | None:
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return exc.code if isinstance(exc, RequestError) else code
    return None


REFUSAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@contextlib.asynccontextmanager
async def mapped_errors(context: grpc.aio.ServicerContext, on_refusal: Callable[[grpc.StatusCode], None] | None = None) -> AsyncIterator[None]:
    """Turn a domain error into an aborted RPC with its status code and message;
    `on_refusal` hears of each PERMISSION_DENIED / UNAUTHENTICATED (e.g. to audit it)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a known domain error
        code = status_of(exc)
        if code is None:
            raise
        if on_refusal is not None and code in REFUSAL_CODES:
            on_refusal(code)
        await context.abort(code, str(exc))
