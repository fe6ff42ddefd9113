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
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

log = logging.getLogger("riskmesh.decoding")


class Malformed:
    """Stands for a request message that did not parse."""

    def __init__(self, method: str) -> None:
        self.message = f"{method}: the request is not a valid protobuf message of this method"


class MalformedRequest(Exception):
    """Raised into a streaming handler when one of its request messages did not parse."""


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
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

    async def refuse(context: grpc.aio.ServicerContext, message: str) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Malformed):
                raise MalformedRequest(request.message)
            yield request

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await refuse(context, request.message)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, safe_deserialize, handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await refuse(context, request.message)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, safe_deserialize, handler.response_serializer)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner_su(checked(request_iterator), context)
            except MalformedRequest as exc:
                await refuse(context, str(exc))

        return grpc.stream_unary_rpc_method_handler(stream_unary, safe_deserialize, handler.response_serializer)
    inner_ss = handler.stream_stream

    async def stream_stream(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in inner_ss(checked(request_iterator), context):
                yield item
        except MalformedRequest as exc:
            await refuse(context, str(exc))

    return grpc.stream_stream_rpc_method_handler(stream_stream, safe_deserialize, handler.response_serializer)
