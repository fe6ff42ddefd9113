"""Domain errors → gRPC status codes, applied in one place.

Each server names its table (error class → status code) next to its servicer; an error
that is itself a `StatusError` carries its own code (a refusal decided by the code that
raises it). `mapped_errors` aborts the call with that code and the error's message, which
by the servers' rule never holds patient data. Anything else propagates unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

StatusTable = Sequence[tuple[type[BaseException], grpc.StatusCode]]


class StatusError(Exception):
    """An error that carries the status code its call ends with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def status_of(exc: BaseException, table: StatusTable = ()) -> grpc.StatusCode | None:
    """The code of a `StatusError`, else of the first class in `table` that `exc` is an instance of, else None."""
    if isinstance(exc, StatusError):
        return exc.code
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    return None


@contextlib.asynccontextmanager
async def mapped_errors(
    context: grpc.aio.ServicerContext,
    table: StatusTable = (),
    *,
    prefix: str = "",
    on_status: Callable[[grpc.StatusCode], None] | None = None,
) -> AsyncIterator[None]:
    """Abort the call on a `StatusError` or an error of `table`: its code, `prefix` + its message.
    `on_status` hears each code first (e.g. to audit refusals)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it has a status
        code = status_of(exc, table)
        if code is None:
            raise
        if on_status is not None:
            on_status(code)
        await context.abort(code, f"{prefix}{exc}")
