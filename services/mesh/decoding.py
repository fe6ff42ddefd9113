"""Requests that do not parse get INVALID_ARGUMENT, like any other bad input.

grpc.aio deserialises a request before (unary) or while (streaming) the handler runs;
a `DecodeError` there (corrupt wire format, a truncated message, invalid UTF-8 in a
string field) would end the call UNKNOWN with "Unexpected DecodeError" and log a
traceback. This interceptor's deserializer never raises: it hands the handler a
`Malformed` marker instead, and the wrapped handler aborts with INVALID_ARGUMENT naming
the method, never the bytes. It sits after the authorisation interceptor, so a caller
who may not call the method is refused first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.mesh.handlers import RequestRefused, wrap_handler

log = logging.getLogger("riskmesh.decoding")


class Malformed:
    """Stands for a request message that did not parse."""

    def __init__(self, method: str) -> None:
        self.message = f"{method}: the request is not a valid protobuf message of this method"


class MalformedRequest(RequestRefused):
    """Raised into a streaming handler when one of its request messages did not parse."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _checked(handler, details.method)


def _checked(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer

    def safe_deserialize(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            log.warning("malformed request message for %s (%d bytes)", method, len(data))
            return Malformed(method)

    async def refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Malformed):
                raise MalformedRequest(request.message)
            yield request

    return wrap_handler(handler, refuse_malformed, requests=checked, deserializer=safe_deserialize)
