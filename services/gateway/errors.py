"""Domain errors of the gateway's cores → gRPC status codes (one table, used by the servicer)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Callable

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
from services.mesh import status
from services.mesh.status import StatusError


class RequestError(StatusError):
    """A refusal decided by the servicer itself, with its status code."""


STATUS_OF = (
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


REFUSAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def mapped_errors(context: grpc.aio.ServicerContext, on_refusal: Callable[[grpc.StatusCode], None] | None = None) -> AbstractAsyncContextManager[None]:
    """Turn a domain error into an aborted RPC with its status code and message;
    `on_refusal` hears of each PERMISSION_DENIED / UNAUTHENTICATED (e.g. to audit it)."""

    def heard(code: grpc.StatusCode) -> None:
        if on_refusal is not None and code in REFUSAL_CODES:
            on_refusal(code)

    return status.mapped_errors(context, STATUS_OF, on_status=heard)
