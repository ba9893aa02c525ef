"""Server wiring: build a server (for tests and embedding), run one (for users).

- :func:`create_server` builds and starts a gRPC server with the optimizer service,
  health checking and reflection, and returns ``(server, port, manager)``; bind port 0
  in tests.
- :func:`serve` runs one until SIGTERM/SIGINT, then drains in-flight RPCs and closes the
  storage.

The server is ``grpc.aio`` on an event loop of its own thread (see
:mod:`promptbo.server.async_servicer` for which calls run on the loop and which on the
thread pool); :class:`RunningServer` gives callers the usual blocking ``stop``/``wait``.
Auth is an interceptor (:class:`BearerTokenInterceptor` for one shared token,
:class:`~promptbo.server.auth.AuthInterceptor` for principals with roles and scopes), not
code in the handlers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from promptbo.server import compute
from promptbo.server.async_servicer import AsyncOptimizerServicer
from promptbo.server.auth import AuthInterceptor, Principals
from promptbo.server.limits import Limits
from promptbo.server.manager import StudyManager
from promptbo.server.servicer import OptimizerServicer
from promptbo.server.storage import InMemoryStorage, Storage, open_storage
from promptbo.server.wire import SafeDecoding
from promptbo.v1 import optimizer_service_pb2, optimizer_service_pb2_grpc

if TYPE_CHECKING:
    from promptbo.server.http import DashboardServer

log = logging.getLogger(__name__)

SERVICE_NAME = optimizer_service_pb2.DESCRIPTOR.services_by_name["OptimizerService"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass
class ServerOptions:
    """How to run a server. ``max_workers``: threads for the calls that do not run on the
    event loop; ``auth_token``: required bearer token ("" = no auth); ``tls_cert``/
    ``tls_key``: PEM files to serve TLS (both or neither); ``prefetch``: suggestions kept
    ready per study (see :class:`~promptbo.server.manager.StudyManager`); ``limits``:
    resource bounds (its ``max_message_bytes`` is replaced by this object's);
    ``principals``: named tokens with roles and scopes (instead of ``auth_token``);
    ``suggest_workers``: engine computations that may run at once (0: one per available
    core; see :mod:`~promptbo.server.compute`). :func:`serve` also sets torch's thread
    count to match; an embedded server (:func:`create_server`) leaves it to its host.
    ``suggest_pool``: where expensive engines compute, ``thread`` (this process; the
    default here, ``promptbo serve`` defaults to ``process``), ``process`` or ``ray`` (see
    :mod:`~promptbo.server.suggest_pool`); ``ray_address``: the Ray cluster of ``ray``
    ("": the connected or a new local one)."""

    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_workers: int = 32
    prefetch: int = 0
    auth_token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    limits: Limits = field(default_factory=Limits)
    principals: Principals | None = None
    #: Serve Prometheus metrics and the dashboard on this port (0: a free one; -1: none),
    #: see :mod:`promptbo.server.http`.
    http_port: int = -1
    suggest_workers: int = 0
    suggest_pool: str = "thread"
    ray_address: str = ""


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC but health checks and
    reflection; compares in constant time; never logs the token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request, context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token: send 'authorization: Bearer <token>' metadata",
            )

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream_in = grpc.stream_unary_rpc_method_handler(deny)
        self._deny_stream_out = grpc.unary_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_OPEN_METHODS):
            return await continuation(handler_call_details)
        given = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        if method.endswith(("/UploadVocabulary", "/UploadPool")):
            return self._deny_stream_in
        if method.endswith("/WatchStudy"):
            return self._deny_stream_out
        return self._deny_unary


class RunningServer:
    """A started server whose event loop runs on a daemon thread.

    Offers the blocking calls of ``grpc.Server`` that callers use: :meth:`stop` and
    :meth:`wait_for_termination`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 server: grpc.aio.Server, executor: futures.ThreadPoolExecutor) -> None:
        self._loop, self._thread, self._server, self._executor = loop, thread, server, executor
        self._stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self.http: DashboardServer | None = None  # with ServerOptions.http_port >= 0

    def stop(self, grace: float | None) -> threading.Event:
        """Stops accepting RPCs, lets in-flight ones finish for ``grace`` seconds (None:
        cancel them), then ends the loop. Returns an event set once all is down."""
        with self._lock:
            if self._stopping:
                return self._stopped
            self._stopping = True
        if self.http is not None:
            self.http.close()
        done = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)

        def finish(_) -> None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._stopped.set()

        done.add_done_callback(lambda f: threading.Thread(target=finish, args=(f,)).start())
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped or ``timeout`` passes; True if stopped."""
        return self._stopped.wait(timeout)


def create_server(
    storage: Storage | str, options: ServerOptions | None = None
) -> tuple[RunningServer, int, StudyManager]:
    """Builds and starts a server; returns ``(server, bound_port, manager)``.

    ``storage`` is a backend or a storage URL (see :func:`open_storage`).

    Raises:
        OSError: the address could not be bound.  ValueError: half a TLS pair.
    """
    opts = options or ServerOptions()
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if opts.auth_token and opts.principals is not None:
        raise ValueError("give either one auth token or a principals file, not both")
    store = open_storage(storage) if isinstance(storage, str) else storage
    limits = replace(opts.limits, max_message_bytes=opts.max_message_bytes)
    manager = StudyManager(store, prefetch=opts.prefetch, limits=limits,
                           suggest_workers=opts.suggest_workers,
                           suggest_pool=opts.suggest_pool, ray_address=opts.ray_address)
    executor = futures.ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix="rpc")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="promptbo-grpc")
    thread.start()
    metrics = None
    if opts.http_port >= 0:
        from promptbo.server.http import Metrics

        metrics = Metrics(manager)
    try:
        server, port = asyncio.run_coroutine_threadsafe(
            _start(manager, executor, opts, metrics), loop
        ).result(60)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        executor.shutdown(wait=False)
        manager.close()
        if metrics is not None:
            metrics.close()
        raise
    running = RunningServer(loop, thread, server, executor)
    if metrics is not None:
        from promptbo.server.http import DashboardServer

        try:
            running.http = DashboardServer(manager, metrics, opts.host, opts.http_port,
                                           opts.auth_token)
        except OSError:
            metrics.close()
            running.stop(0).wait(10)
            manager.close()
            raise
    return running, port, manager


async def _start(
    manager: StudyManager, executor: futures.ThreadPoolExecutor, opts: ServerOptions,
    metrics=None,
) -> tuple[grpc.aio.Server, int]:
    interceptors: list[grpc.aio.ServerInterceptor] = [SafeDecoding(f"/{SERVICE_NAME}/")]
    if opts.auth_token:
        interceptors.insert(0, BearerTokenInterceptor(opts.auth_token))
    if opts.principals is not None:
        interceptors.insert(0, AuthInterceptor(opts.principals, f"/{SERVICE_NAME}/"))
    if metrics is not None:
        from promptbo.server.http import RpcMetricsInterceptor

        # Outermost, so refusals by the interceptors below are counted too.
        interceptors.insert(0, RpcMetricsInterceptor(metrics))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", opts.max_message_bytes),
            ("grpc.max_send_message_length", opts.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    optimizer_service_pb2_grpc.add_OptimizerServiceServicer_to_server(
        AsyncOptimizerServicer(OptimizerServicer(manager), executor), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{opts.host}:{opts.port}"
    try:
        if opts.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(Path(opts.tls_key).read_bytes(), Path(opts.tls_cert).read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as err:  # grpc.aio reports a failed bind this way
        raise OSError(f"could not bind {address}: {err}") from err
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def serve(
    storage_url: str,
    options: ServerOptions | None = None,
    port_file: str = "",
    grace_seconds: float = 10.0,
    shared: bool = False,
) -> None:
    """Runs a server until SIGTERM or SIGINT, then stops gracefully. Sets torch's
    intra-op threads so that ``suggest_workers`` concurrent computations fit the cores.
    ``shared`` marks a SQLite storage as written by other server processes too (a
    PostgreSQL one always is; see :mod:`promptbo.server.replica_sync`)."""
    opts = options or ServerOptions()
    workers = compute.suggest_workers(opts.suggest_workers)
    threads = compute.configure_torch_threads(workers)
    log.info("suggestions: %d at once (%s pool), %d torch thread(s) each, %d core(s) "
             "available", workers, opts.suggest_pool, threads, compute.available_cores())
    store = open_storage(storage_url)
    if shared:
        if isinstance(store, InMemoryStorage):
            raise ValueError("an in-memory store cannot be shared by several servers")
        store.shared = True
    server, port, manager = create_server(store, opts)
    pool = manager.studies.suggest_pool
    if pool is not None:  # its workers load their libraries while the server starts
        threading.Thread(target=pool.start, name="promptbo-pool-start", daemon=True).start()
    stopped = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d received; draining in-flight RPCs", signum)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "promptbo serving on %s:%d (storage %s%s, auth %s, tls %s)",
        opts.host, port, _redact(storage_url), ", shared" if store.shared else "",
        "principals" if opts.principals else "on" if opts.auth_token else "off",
        "on" if opts.tls_cert else "off",
    )
    print(f"promptbo serving on {opts.host}:{port}", flush=True)
    if server.http is not None:
        print(f"dashboard and /metrics on http://{opts.host}:{server.http.port}/", flush=True)
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
