"""The gateway's errors and their gRPC status codes (one table, used by the servicer).

The store's refusals (`StoreError` and its kinds) must hold whoever calls the store;
`RequestError` is a refusal decided by the gateway itself and carries its own code;
`PhaseFailure` is a phase of a run failing at an organisation (it ends the run, and is
never a status code by itself).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc

from riskmesh.v1 import common_pb2
from services.gateway.audit import AuditError
from services.gateway.predict import PredictError
from services.mesh import status
from services.mesh.status import StatusError
from services.study.spec import SpecError


class StoreError(Exception):
    """Base of the store's refusals."""


class UnknownStudyError(StoreError, LookupError):
    """No study with that id."""


class UnknownRunError(StoreError, LookupError):
    """No run with that id."""


class StaleDigestError(StoreError):
    """The digest named is not the study's current one (the spec changed)."""


class NotApprovedError(StoreError):
    """The study's current spec lacks an approval needed to run."""


class DuplicateRunError(StoreError):
    """A run with that id exists already."""


class IllegalTransitionError(StoreError):
    """A run state change that the lifecycle does not allow (or a change to a finished run)."""


class NotAPartyError(StoreError):
    """The organisation has no part (or not the needed role) in the study."""


class RunPolicyError(StoreError):
    """A run outside the study's run policy: over its quota, or too soon after the last run."""


class InvalidValueError(StoreError, ValueError):
    """A malformed argument: a bad id, a digest that does not match its spec, an unknown enum value."""


class RequestError(StatusError):
    """A refusal decided by the gateway itself, with its status code."""


class PhaseFailure(Exception):
    """A phase of the run failed at an organisation.

    `reason` is the full story, for this organisation's run record and log (it may name a
    CSV row or column); `category` is all the other organisations are told
    ("input validation failed"), so nothing of this organisation's data crosses.
    """

    def __init__(self, phase: common_pb2.Phase.ValueType, org: str, reason: str, category: str = "") -> None:
        super().__init__(f"{common_pb2.Phase.Name(phase)} at {org}: {reason}")
        self.phase = phase
        self.org = org
        self.reason = reason
        self.category = category or "failed"


def failure_category(phase: common_pb2.Phase.ValueType, server: str, code: grpc.StatusCode) -> str:
    """What other organisations are told when a call to one of this organisation's servers failed."""
    if server == "encryption" and code == grpc.StatusCode.INVALID_ARGUMENT and phase == common_pb2.PHASE_SETUP:
        return "input validation failed"
    if server == "intersection" and code == grpc.StatusCode.FAILED_PRECONDITION:
        return "the intersection is smaller than the study's minimum"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"its {server} server did not answer"
    if code == grpc.StatusCode.CANCELLED:
        return "cancelled"
    return f"{server} failed ({code.name})"


STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (UnknownStudyError, grpc.StatusCode.NOT_FOUND),
    (UnknownRunError, grpc.StatusCode.NOT_FOUND),
    (StaleDigestError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotApprovedError, grpc.StatusCode.FAILED_PRECONDITION),
    (RunPolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (IllegalTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (DuplicateRunError, grpc.StatusCode.ALREADY_EXISTS),
    (NotAPartyError, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (PredictError, grpc.StatusCode.INVALID_ARGUMENT),
    (AuditError, grpc.StatusCode.INVALID_ARGUMENT),
)


REFUSAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def mapped_errors(
    context: grpc.aio.ServicerContext, on_refusal: Callable[[grpc.StatusCode], None] | None = None
) -> AbstractAsyncContextManager[None]:
    """Turn a domain error into an aborted RPC with its status code and message;
    `on_refusal` hears of each PERMISSION_DENIED / UNAUTHENTICATED (e.g. to audit it)."""

    def heard(code: grpc.StatusCode) -> None:
        if on_refusal is not None and code in REFUSAL_CODES:
            on_refusal(code)

    return status.mapped_errors(context, STATUS_OF, on_status=heard)
