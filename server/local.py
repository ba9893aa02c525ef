"""An in-process stand-in for a gRPC channel: the client calls the servicer directly.

``Client(stub=LocalStub(servicer))`` runs the full client and servicer code paths —
conversions, the error table, status codes — without sockets, the way OSS Vizier tests
its client against an in-process servicer. Used by the test suite and by code that
embeds the optimizer in one process.
"""

from __future__ import annotations

import grpc


class LocalRpcError(grpc.RpcError):
    """Carries the status code and details a real channel would report."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Context:
    """The subset of ``grpc.ServicerContext`` the servicer uses."""

    def __init__(self, metadata=()) -> None:
        self._metadata = tuple(metadata or ())
        self._callbacks: list = []

    def abort(self, code: grpc.StatusCode, details: str):
        raise LocalRpcError(code, details)

    def invocation_metadata(self):
        return self._metadata

    def add_callback(self, callback) -> bool:
        self._callbacks.append(callback)
        return True

    def is_active(self) -> bool:
        return True


class _Method:
    def __init__(self, servicer, name: str) -> None:
        self._fn = getattr(servicer, name)

    def __call__(self, request, timeout=None, metadata=None):
        return self._fn(request, _Context(metadata))


class LocalStub:
    """Quacks like ``OptimizerServiceStub`` over a servicer in this process."""

    def __init__(self, servicer) -> None:
        self._servicer = servicer

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._servicer, name)
