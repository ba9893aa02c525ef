"""Server wiring: build a server (for tests and embedding), run one (for users).

- :func:`create_server` builds and starts a gRPC server with the optimizer service,
  health checking and reflection, and returns ``(server, port)``; bind port 0 in tests.
- :func:`serve` runs one until SIGTERM/SIGINT, then drains in-flight RPCs and closes the
  storage.

Auth is an interceptor (:class:`BearerTokenInterceptor`), not code in the handlers.
"""

from __future__ import annotations

import hmac
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from promptbo.server.manager import StudyManager
from promptbo.server.servicer import OptimizerServicer
from promptbo.server.storage import Storage, open_storage
from promptbo.v1 import optimizer_service_pb2, optimizer_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = optimizer_service_pb2.DESCRIPTOR.services_by_name["OptimizerService"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass
class ServerOptions:
    """How to run a server. ``auth_token``: required bearer token ("" = no auth);
    ``tls_cert``/``tls_key``: PEM files to serve TLS (both or neither); ``prefetch``:
    suggestions kept ready per study (see :class:`~promptbo.server.manager.StudyManager`)."""

    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_workers: int = 32
    prefetch: int = 0
    auth_token: str = ""
    tls_cert: str = ""
    tls_key: str = ""


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC but health checks and
    reflection; compares in constant time; never logs the token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send 'authorization: Bearer <token>' metadata",
            )

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream_in = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_out = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_OPEN_METHODS):
            return continuation(handler_call_details)
        given = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        if method.endswith("/UploadVocabulary"):
            return self._deny_stream_in
        if method.endswith("/WatchStudy"):
            return self._deny_stream_out
        return self._deny_unary


def create_server(
    storage: Storage | str, options: ServerOptions | None = None
) -> tuple[grpc.Server, int, StudyManager]:
    """Builds and starts a server; returns ``(server, bound_port, manager)``.

    ``storage`` is a backend or a storage URL (see :func:`open_storage`).
    """
    opts = options or ServerOptions()
    store = open_storage(storage) if isinstance(storage, str) else storage
    manager = StudyManager(store, prefetch=opts.prefetch)
    interceptors = [BearerTokenInterceptor(opts.auth_token)] if opts.auth_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", opts.max_message_bytes),
            ("grpc.max_send_message_length", opts.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    optimizer_service_pb2_grpc.add_OptimizerServiceServicer_to_server(
        OptimizerServicer(manager), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{opts.host}:{opts.port}"
    if opts.tls_cert or opts.tls_key:
        if not (opts.tls_cert and opts.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        creds = grpc.ssl_server_credentials(
            [(Path(opts.tls_key).read_bytes(), Path(opts.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, manager


def serve(
    storage_url: str,
    options: ServerOptions | None = None,
    port_file: str = "",
    grace_seconds: float = 10.0,
) -> None:
    """Runs a server until SIGTERM or SIGINT, then stops gracefully."""
    opts = options or ServerOptions()
    store = open_storage(storage_url)
    server, port, manager = create_server(store, opts)
    stopped = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d received; draining in-flight RPCs", signum)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "promptbo serving on %s:%d (storage %s, auth %s, tls %s)",
        opts.host, port, _redact(storage_url), "on" if opts.auth_token else "off",
        "on" if opts.tls_cert else "off",
    )
    print(f"promptbo serving on {opts.host}:{port}", flush=True)
    if port_file:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    stopped.wait()
    server.stop(grace_seconds).wait()
    manager.close()
    store.close()
    log.info("promptbo server stopped")


def _redact(url: str) -> str:
    """Hides a password in a storage URL for logs."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
