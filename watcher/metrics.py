"""Prometheus metrics and the /healthz endpoint.

`Metrics` owns a private `CollectorRegistry` (never prometheus-client's global one, so several
daemons in one test process do not collide). Events the daemon reports move counters and a
histogram; the state gauges are read from the daemon's `status()` snapshot at scrape time, so
they cannot drift from what `nextmv-watcher status` shows.

`HealthServer` serves both over HTTP on a daemon thread:

    GET /metrics  200, Prometheus text exposition format
    GET /healthz  200 {"healthy": true, ...} or 503 {"healthy": false, "reasons": [...], ...}
    anything else 404

Series (all prefixed ``nextmv_watcher_``):

    folders_total{application_id, outcome, reason}      counter; outcome tracked | failed | retried
    upload_bytes_total                                  counter
    request_duration_seconds{endpoint, status}          histogram; status "none" when no response
    queue_depth, in_flight, oldest_pending_age_seconds  gauges (age 0 when nothing is pending)
    api_paused{scope}                                   1 per paused scope ("all" for the global
                                                        pause); a single {scope="all"} 0 when none
    observer_restarts_total                             counter
    incomplete_too_long                                 gauge: folders incomplete for longer than
                                                        metrics.incomplete_warn_seconds
    up, uptime_seconds                                  gauges
    process_*                                           the standard process metrics (Linux)
"""

from __future__ import annotations

import enum
import json
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watcher.client import RequestOutcome
from watcher.retry import GLOBAL

log = structlog.get_logger("watcher.metrics")

PREFIX = "nextmv_watcher_"
OUTCOMES = ("tracked", "failed", "retried")
ALL_SCOPES = "all"
# From a quick API call to a large upload on a slow link.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Status = Callable[[], Mapping[str, Any]]
Health = Callable[[], tuple[bool, Mapping[str, Any]]]


class Metrics:
    """The daemon's metrics. Thread-safe: workers report events from any thread.

    `status` is called on every scrape (from the HTTP thread) and must return the daemon's
    snapshot: queue_depth, in_flight (list), oldest_pending_age_seconds (float or None), paused
    (scope -> {reason, message, since}), observer_restarts, incomplete_too_long, uptime_seconds.
    A missing key reads as zero/empty, so an older or partial snapshot never breaks a scrape.
    """

    def __init__(self, status: Status) -> None:
        self.registry = CollectorRegistry()
        self._folders = Counter(f"{PREFIX}folders", "Run folders by application and outcome.",
                                ["application_id", "outcome", "reason"], registry=self.registry)
        self._upload_bytes = Counter(f"{PREFIX}upload_bytes", "Bytes uploaded to presigned URLs.",
                                     registry=self.registry)
        self._requests = Histogram(f"{PREFIX}request_duration_seconds",
                                   "Nextmv API and upload request attempts by endpoint and HTTP status.",
                                   ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.registry.register(_StatusCollector(status))
        ProcessCollector(registry=self.registry)

    def folder(self, application_id: str, outcome: str, reason: str) -> None:
        """Count a folder's outcome: tracked, failed (reason: invalid, rejected, exhausted) or retried
        (reason: the transient error). Raises ValueError for any other outcome."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown folder outcome {outcome!r} (known: {', '.join(OUTCOMES)})")
        self._folders.labels(application_id=application_id, outcome=outcome, reason=reason).inc()

    def upload_bytes(self, n: int) -> None:
        """Count `n` uploaded bytes (n >= 0, else ValueError)."""
        self._upload_bytes.inc(n)

    def request(self, outcome: RequestOutcome) -> None:
        """Observe one HTTP attempt; fits `NextmvClient(observer=...)`."""
        status = "none" if outcome.status is None else str(outcome.status)
        self._requests.labels(endpoint=outcome.endpoint, status=status).observe(outcome.seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (served as CONTENT_TYPE_LATEST)."""
        return _generate_latest(self.registry)


class _StatusCollector:
    """The gauges, read from the daemon's status snapshot at scrape time."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not call status().
        return self._families({}, describe=True)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._status(), describe=False)

    def _families(self, s: Mapping[str, Any], *, describe: bool) -> list[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=None if describe else value)

        age = s.get("oldest_pending_age_seconds")
        paused = GaugeMetricFamily(f"{PREFIX}api_paused", "1 per paused scope (an application, or all).",
                                   labels=["scope"])
        restarts = CounterMetricFamily(f"{PREFIX}observer_restarts", "Filesystem observer restarts.",
                                       value=None if describe else s.get("observer_restarts", 0))
        if not describe:
            scopes = sorted(ALL_SCOPES if scope == GLOBAL else str(scope) for scope in s.get("paused") or {})
            for scope in scopes:
                paused.add_metric([scope], 1)
            if not scopes:
                paused.add_metric([ALL_SCOPES], 0)
        return [
            gauge("queue_depth", "Folders waiting in the queue.", s.get("queue_depth", 0)),
            gauge("in_flight", "Folders a worker is processing.", len(s.get("in_flight") or ())),
            gauge("oldest_pending_age_seconds", "Age of the oldest folder waiting to be tracked (0 when none).",
                  0.0 if age is None else age),
            paused,
            restarts,
            gauge("incomplete_too_long", "Folders incomplete for longer than metrics.incomplete_warn_seconds.",
                  s.get("incomplete_too_long", 0)),
            gauge("up", "1 while the daemon runs.", 1),
            gauge("uptime_seconds", "Seconds since the daemon started.", s.get("uptime_seconds", 0.0)),
        ]


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class HealthServer:
    """The HTTP listener for /metrics and /healthz, on a daemon thread.

    `listen` is "host:port" ("[::1]:9464" for IPv6; port 0 picks a free one, see `port`).
    `health` returns (healthy, details); details are merged into the JSON body, and an unhealthy
    answer should carry "reasons" (a list of strings). `start()` binds (raising OSError when the
    address is taken) and serves; `stop()` closes the socket and joins the thread. A server is
    started at most once.
    """

    def __init__(self, listen: str, metrics: Metrics, health: Health) -> None:
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.health = health
        self._state = _State.NEW
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(f"HealthServer cannot start: it is {self._state.value}")
            server = _Server((self.host, self.port), _Handler, self)
            self._server = server
            self.port = server.server_address[1]
            self._thread = threading.Thread(target=server.serve_until_woken, name="nextmv-watcher-http", daemon=True)
            self._thread.start()
            self._state = _State.RUNNING
        log.info("metrics_listening", host=self.host, port=self.port)

    def stop(self) -> None:
        """Stop serving and free the port; idempotent, and a no-op before `start()`."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._state = _State.STOPPED
        if server is None or thread is None:
            return
        server.wake()
        thread.join()
        server.server_close()

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' -> (host, port); IPv6 hosts in brackets. Raises ValueError when malformed."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose loop sleeps until a connection or `wake()`: unlike serve_forever
    it neither wakes up twice a second while idle nor makes `stop()` wait for the next poll."""

    daemon_threads = True
    timeout = 0.0   # handle_request() must not block if the connection that woke us vanished

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: HealthServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        self._wake_r, self._wake_w = socket.socketpair()   # before binding: a failed bind calls server_close
        super().__init__(address, handler)

    def serve_until_woken(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}
                if self._wake_r in ready:
                    return
                self.handle_request()   # accepts the waiting connection; the handler runs on its own thread

    def wake(self) -> None:
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print a traceback to stderr, e.g. for a scraper that hung up mid-reply.
        log.debug("metrics_connection_error", client=str(client_address))

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can hang start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10   # a client that stalls mid-request does not hold a thread forever

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        try:
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                self._healthz()
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")
        except Exception:   # a bug in a status or health callback must not kill the listener
            log.exception("metrics_request_failed", path=self.path)
            self._reply(500, "text/plain; charset=utf-8", b"internal error\n")

    def _metrics(self) -> None:
        self._reply(200, CONTENT_TYPE_LATEST, self.server.owner.metrics.render())

    def _healthz(self) -> None:
        healthy, details = self.server.owner.health()
        body: dict[str, Any] = {"healthy": healthy, **details}
        if not healthy:
            body.setdefault("reasons", [])
        payload = json.dumps(body, default=str, sort_keys=True).encode("utf-8") + b"\n"
        self._reply(200 if healthy else 503, "application/json", payload)

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no per-request lines on stderr (journald would keep every scrape)."""
