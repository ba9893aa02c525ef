"""The server's HTTP side: Prometheus metrics and a read-only web dashboard.

``promptbo serve --http-port N`` starts, next to the gRPC server, a small threaded HTTP
server (standard library) on the same host:

- ``GET /metrics``: the Prometheus text format (``prometheus-client``, in the server
  extra): ``promptbo_rpc_total{method,code}`` and ``promptbo_rpc_seconds{method}`` (a
  histogram; a WatchStudy stream counts its whole duration), counted by
  :class:`RpcMetricsInterceptor`; ``promptbo_studies{state}`` and
  ``promptbo_trials{state}``, read from the study manager at each scrape;
  ``promptbo_suggestion_seconds{strategy}`` and ``promptbo_gp_fit_seconds{strategy}``
  (histograms of engine time, background prefetch included) and
  ``promptbo_leases_expired_total``, fed through :mod:`promptbo.server.telemetry`.
- ``GET /``: the dashboard, one page that polls the JSON below every two seconds: the
  studies with their state and counts, and per study a convergence plot (every completed
  trial's objective and the best so far), the best prompts, the sortable trials table and
  the study's spec with its recorded scoring setup.
- ``GET /api/studies`` and ``GET /api/studies/NAME``: that JSON, with the proto's
  snake_case field names; soft prompts' vectors are left out.

With an auth token, every path but the page itself needs it, as ``Authorization: Bearer
<token>`` or ``?token=<token>`` (the page passes on the token of its own URL).
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from promptbo.errors import NotFoundError
from promptbo.server import convert, telemetry
from promptbo.server.domain import Study, StudyState, TrialState
from promptbo.server.manager import StudyManager

log = logging.getLogger(__name__)

MAX_DASHBOARD_TRIALS = 5000


class Metrics:
    """The server's Prometheus registry (one per server, so tests can run several)."""

    def __init__(self, manager: StudyManager) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.rpcs = Counter("promptbo_rpc", "RPCs handled, by method and status code",
                            ["method", "code"], registry=self.registry)
        self.latency = Histogram(
            "promptbo_rpc_seconds", "RPC handling time in seconds, by method", ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30), registry=self.registry)
        engine_buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                          60, 120)
        self.suggestion = Histogram(
            "promptbo_suggestion_seconds",
            "Seconds an engine spent computing one batch of suggestions (background "
            "prefetch included), by strategy", ["strategy"], buckets=engine_buckets,
            registry=self.registry)
        self.fit = Histogram(
            "promptbo_gp_fit_seconds", "Seconds spent fitting one GP surrogate, by strategy",
            ["strategy"], buckets=engine_buckets, registry=self.registry)
        self.leases = Counter(
            "promptbo_leases_expired",
            "Trials whose lease lapsed and that were handed out again", registry=self.registry)
        self.registry.register(_StudyCollector(manager))
        telemetry.add_observer(self)

    def close(self) -> None:
        """Stops receiving engine and lease observations."""
        telemetry.remove_observer(self)

    # --- telemetry.Observer ---------------------------------------------------------------
    def observe_suggestion(self, strategy: str, seconds: float) -> None:
        self.suggestion.labels(strategy).observe(seconds)

    def observe_fit(self, strategy: str, seconds: float) -> None:
        self.fit.labels(strategy).observe(seconds)

    def lease_expired(self, study: str, count: int) -> None:
        self.leases.inc(count)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _StudyCollector:
    """Studies by state and trials by state, read from the manager at each scrape."""

    def __init__(self, manager: StudyManager) -> None:
        self.manager = manager

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        studies = dict.fromkeys((s.value for s in StudyState if s.value != "unspecified"), 0)
        trials = dict.fromkeys((s.value for s in TrialState), 0)
        for study in all_studies(self.manager):
            studies[study.state.value] = studies.get(study.state.value, 0) + 1
            try:
                counts = self.manager.study_counts(study.name)
            except NotFoundError:  # deleted meanwhile
                continue
            for state, n in counts.items():
                trials[state.value] += n
        g = GaugeMetricFamily("promptbo_studies", "Studies, by state", labels=["state"])
        for state_name, n in studies.items():
            g.add_metric([state_name], n)
        yield g
        g = GaugeMetricFamily("promptbo_trials", "Trials of all studies, by state",
                              labels=["state"])
        for state_name, n in trials.items():
            g.add_metric([state_name], n)
        yield g
        yield from _prefetch_metrics(self.manager)


def _prefetch_metrics(manager: StudyManager):
    """Per in-memory study of an expensive engine: prefetch depth, ready and discarded
    suggestions, and the measured times the depth comes from; and the compute slots."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    depth = GaugeMetricFamily("promptbo_prefetch_depth",
                              "Suggestions a study's refills compute (adaptive, <= --prefetch)",
                              labels=["study"])
    ready = GaugeMetricFamily("promptbo_prefetch_ready", "Prefetched suggestions ready",
                              labels=["study"])
    dropped = CounterMetricFamily("promptbo_prefetch_discarded",
                                  "Prefetched batches dropped because new data made them stale",
                                  labels=["study"])
    suggest = GaugeMetricFamily("promptbo_study_suggestion_seconds",
                                "Running average of one batch of suggestions, per study",
                                labels=["study"])
    evaluate = GaugeMetricFamily("promptbo_study_evaluation_seconds",
                                 "Running average from hand-out to result, per study",
                                 labels=["study"])
    for name, rt in manager.studies.runtimes():
        if rt.cheap:
            continue
        depth.add_metric([name], rt.depth)
        ready.add_metric([name], len(rt.ready))
        dropped.add_metric([name], rt.discarded)
        if rt.pace.suggest_s is not None:
            suggest.add_metric([name], rt.pace.suggest_s)
        if rt.pace.eval_s is not None:
            evaluate.add_metric([name], rt.pace.eval_s)
    yield from (depth, ready, dropped, suggest, evaluate)
    slots = manager.studies.slots
    g = GaugeMetricFamily("promptbo_compute_slots", "Engine computations that may run at once")
    g.add_metric([], slots.size)
    yield g
    g = GaugeMetricFamily("promptbo_compute_slots_busy", "Engine computations running now")
    g.add_metric([], slots.busy)
    yield g
    pool = manager.studies.suggest_pool
    if pool is None:
        return
    stats = pool.stats()
    for name, key, text in (
        ("promptbo_pool_workers", "workers", "Suggestion pool workers (--suggest-workers)"),
        ("promptbo_pool_workers_alive", "alive", "Suggestion pool workers started and alive"),
        ("promptbo_pool_workers_busy", "busy", "Suggestion pool workers computing a job"),
        ("promptbo_pool_jobs_queued", "queued", "Suggestion jobs waiting for a pool worker"),
    ):
        g = GaugeMetricFamily(name, text)
        g.add_metric([], stats[key])
        yield g
    for name, key, text in (
        ("promptbo_pool_jobs_retried", "retried", "Jobs retried because their worker died"),
        ("promptbo_pool_workers_replaced", "replaced", "Pool workers replaced after dying"),
        ("promptbo_pool_history_batches_shipped", "batches_shipped",
         "Batches of study history sent to pool workers"),
        ("promptbo_pool_jobs", "jobs_done", "Jobs pool workers answered"),
    ):
        c = CounterMetricFamily(name, text)
        c.add_metric([], stats[key])
        yield c


def _code_name(context, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if failed else "OK"


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC and its handling time in :class:`Metrics`, by method and code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        observe = self.metrics.observe
        if handler.unary_unary is not None or handler.stream_unary is not None:
            kind = "unary_unary" if handler.unary_unary is not None else "stream_unary"
            inner = getattr(handler, kind)

            async def unary(request, context):
                t0, failed = time.perf_counter(), True
                try:
                    result = inner(request, context)
                    if inspect.isawaitable(result):
                        result = await result
                    failed = False
                    return result
                finally:
                    observe(method, _code_name(context, failed), time.perf_counter() - t0)

            return handler._replace(**{kind: unary})
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                t0, failed = time.perf_counter(), True
                try:
                    async for item in inner_stream(request, context):
                        yield item
                    failed = False
                finally:
                    observe(method, _code_name(context, failed), time.perf_counter() - t0)

            return handler._replace(unary_stream=stream)
        return handler  # bidirectional streams (reflection) are not counted


# --- the dashboard's JSON ------------------------------------------------------------------

def _study_json(manager: StudyManager, name: str) -> dict[str, Any]:
    study, counts, best = manager.describe(name)
    d = MessageToDict(convert.study_to_pb(study, counts, best), preserving_proto_field_name=True)
    d.get("spec", {}).get("hard", {}).get("filter", {}).get("top_n", {}).pop("scores", None)
    d.get("best_trial", {}).get("prompt", {}).pop("vector", None)
    return d


def all_studies(manager: StudyManager) -> list[Study]:
    """Every study, by name, read page by page."""
    out: list[Study] = []
    token = ""
    while True:
        page, token = manager.list_studies(0, token)
        out.extend(page)
        if not token:
            return out


def studies_json(manager: StudyManager) -> list[dict[str, Any]]:
    out = []
    for s in all_studies(manager):
        try:
            out.append(_study_json(manager, s.name))
        except NotFoundError:
            continue
    return out


def study_json(manager: StudyManager, name: str) -> dict[str, Any]:
    """The study and up to :data:`MAX_DASHBOARD_TRIALS` of its trials, by id."""
    trials: list[dict[str, Any]] = []
    token = ""
    while len(trials) < MAX_DASHBOARD_TRIALS:
        page, token = manager.list_trials(name, None, 1000, token)
        for t in page:
            d = MessageToDict(convert.trial_to_pb(t), preserving_proto_field_name=True)
            d.get("prompt", {}).pop("vector", None)
            d["id"] = int(d["id"])
            trials.append(d)
        if not token:
            break
    return {"study": _study_json(manager, name), "trials": trials}


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http %s", fmt % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        expected = self.server.token
        if not expected:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer "):
            given = given[len("Bearer "):]
        else:
            given = (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), expected.encode())

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
            return
        if not self._authorized(query):
            self._json(401, {"error": "missing or wrong token: send 'Authorization: Bearer "
                                      "<token>' or ?token=<token>"})
            return
        manager = self.server.manager
        try:
            if path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                self._send(200, self.server.metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/api/studies":
                self._json(200, studies_json(manager))
            elif path.startswith("/api/studies/"):
                name = urllib.parse.unquote(path[len("/api/studies/"):])
                self._json(200, study_json(manager, name))
            else:
                self._json(404, {"error": f"no page {path}"})
        except NotFoundError as err:
            self._json(404, {"error": str(err)})
        except Exception:
            log.exception("dashboard error on %s", path)
            self._json(500, {"error": "internal error; see the server log"})


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server; :meth:`close` stops it. ``port`` is the bound port."""

    daemon_threads = True

    def __init__(self, manager: StudyManager, metrics: Metrics, host: str, port: int,
                 token: str = "") -> None:
        super().__init__((host, port), _Handler)
        self.manager, self.metrics, self.token = manager, metrics, token
        self.page = resources.files("promptbo.server").joinpath("dashboard.html").read_bytes()
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name="promptbo-http")
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
        self.metrics.close()
