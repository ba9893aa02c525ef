"""Malformed request bytes become INVALID_ARGUMENT, not UNKNOWN.

gRPC answers a request whose bytes do not parse as its message type with UNKNOWN
("Exception deserializing request"), before any handler runs. :class:`SafeDecoding`
wraps the deserializer of every method of the optimizer service so that such bytes
decode to a :class:`MalformedRequest` instead; the servicers answer it with
INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class MalformedRequest:
    """Stands in for a request whose bytes did not parse; ``details`` says so."""

    __slots__ = ("details",)

    def __init__(self, details: str) -> None:
        self.details = details


def _safe(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parse failure of the client's bytes
            return MalformedRequest(
                f"the request is not a valid protobuf message of this method "
                f"({type(exc).__name__}); send the message the .proto declares"
            )

    return decode


class SafeDecoding(grpc.aio.ServerInterceptor):
    """Makes the deserializers of the methods under ``prefix`` total (see module doc)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_deserializer is None
            or not handler_call_details.method.startswith(self._prefix)
        ):
            return handler
        return handler._replace(request_deserializer=_safe(handler.request_deserializer))
