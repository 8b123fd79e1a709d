"""Requests whose bytes do not parse as their message: answered INVALID_ARGUMENT, not UNKNOWN.

grpc.aio answers a request its deserializer cannot parse with UNKNOWN and the parser's exception text. This
interceptor gives every method a deserializer that never raises: bytes that are not the method's message reach
the handler as :data:`MALFORMED`, and the handler (:meth:`.service.HostAgentService`) refuses it by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

MALFORMED = object()  # a request that did not parse


def lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except (DecodeError, ValueError, RecursionError):
            return MALFORMED

    return deserialize


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # type: ignore[no-any-return]
        return handler._replace(request_deserializer=lenient(handler.request_deserializer))  # type: ignore[no-any-return]
