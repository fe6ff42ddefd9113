"""One wrapper for server handlers of all four RPC kinds (unary/stream requests × responses).

The interceptors (authz.py, decoding.py) each put a step in front of the servicer's
handler; grpc.aio gives them the handler only, so the step is wrapped around it here,
once, for every kind of RPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.mesh.status import StatusError

# Awaited with the request (None for a request stream) and the context before the handler runs.
Before = Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]
# Wraps a request stream on its way to the handler.
Requests = Callable[[AsyncIterator[Any]], AsyncIterator[Any]]


class RequestRefused(StatusError):
    """Raised from a wrapped request stream: the call ends with its code and message."""


def _unchanged(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    return requests


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    before: Before,
    *,
    requests: Requests = _unchanged,
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with `before(request, context)` awaited first, a request stream passed
    through `requests`, and `deserializer` (if given) in place of the handler's. A
    `RequestRefused` raised out of a request-streaming handler aborts the call with its status."""
    deserialize = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await before(request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await before(None, context)
            try:
                return await inner_su(requests(request_iterator), context)
            except RequestRefused as exc:
                await context.abort(exc.code, str(exc))

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
    inner_ss = handler.stream_stream

    async def stream_stream(
        request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await before(None, context)
        try:
            async for item in inner_ss(requests(request_iterator), context):
                yield item
        except RequestRefused as exc:
            await context.abort(exc.code, str(exc))

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
