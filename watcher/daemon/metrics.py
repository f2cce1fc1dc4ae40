"""Prometheus metrics and the /healthz endpoint.

`Metrics` owns a private `CollectorRegistry` (never prometheus-client's global one, so several
daemons in one test process do not collide). Events the daemon reports move counters and a
histogram; the state gauges are read from the daemon's `status()` snapshot at scrape time, so
they cannot drift from what `nextmv-watcher status` shows, and nextmv_watcher_healthy from the
/healthz answer itself (the collectors are in `watcher.daemon.collectors`).

`HealthServer` serves both over HTTP on a daemon thread:

    GET /metrics  200, Prometheus text exposition format
    GET /healthz  200 {"healthy": true, ...} or 503 {"healthy": false, "reasons": [...], ...}
    anything else 404

Anyone who can reach the listen address can connect, so what a client can hold is bounded: at
most `MAX_CONNECTIONS` (16) connections are served at once, each on its own thread, and one more
is closed as soon as it is accepted (counted in metrics_connections_refused_total); every
connection is cut `CONNECTION_SECONDS` (10) after it was accepted, whatever it sends or fails to
read, so idle or trickling clients give their slot back. A scrape takes milliseconds, and
Prometheus' default scrape timeout is 10 s as well. A scraper refused while the slots are held
sees a closed connection (Prometheus records a failed scrape) until the holders are cut.

Series (all prefixed ``nextmv_watcher_``):

    folders_total{application_id, outcome, reason}      counter; outcome tracked | failed | retried
                                                        (reason "manual": an operator's `retry`)
    build_info{version}                                 always 1: the running version
    healthy                                             gauge: 1 while /healthz answers 200, else 0
                                                        (health.py's rule, read at scrape time)
    upload_bytes_total                                  counter
    request_duration_seconds{endpoint, status}          histogram; status "none" when no response
    folders_pending{state}                              gauge, every state always exported: queued
                                                        (due now), in_flight, retry_wait, parked
    queue_depth, in_flight                              gauges: folders_pending queued, in_flight
    concurrency_limit                                   gauge: folders that may be in flight now (the
                                                        adaptive limit, at most `workers`; `workers`
                                                        with concurrency: fixed)
    api_rate_limit                                      gauge: API calls per second the daemon allows
                                                        itself after 429s (pacing.py); 0: not paced
    oldest_pending_age_seconds                          gauge: since the oldest pending folder was
                                                        first seen complete (0 when none is)
    api_paused{scope}                                   1 per paused scope ("all" for the global
                                                        pause); a single {scope="all"} 0 when none
    observer_restarts_total                             counter
    watched_path_present{path}                          gauge, one per watched path: 1 while it is
                                                        watched, 0 while it is missing (status's
                                                        watched and watched_missing)
    metrics_connections_refused_total                   counter: connections to this listener closed
                                                        unserved because MAX_CONNECTIONS were open
    incomplete_too_long                                 gauge: folders incomplete for longer than
                                                        metrics.incomplete_warn_seconds
    up, uptime_seconds                                  gauges
    process_*                                           the standard process metrics (Linux)
"""

from __future__ import annotations

import contextlib
import enum
import json
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client import generate_latest as _generate_latest

from watcher import __version__
from watcher.cloud.client import RequestOutcome
from watcher.config import parse_listen
from watcher.daemon.collectors import PREFIX, Health, HealthCollector, OutcomesCollector, Status, StatusCollector

log = structlog.get_logger("watcher.daemon.metrics")

# The listener's bounds (see the module docstring): connections served at once, and how long one may last.
MAX_CONNECTIONS = 16
CONNECTION_SECONDS = 10.0
CONNECTION_THREAD = "nextmv-watcher-http-connection"
# From a quick API call to a large upload on a slow link.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

class Metrics:
    """The daemon's metrics. Thread-safe: workers report events from any thread.

    `status` is called on every scrape (from the HTTP thread) and must return the daemon's
    snapshot: folders (state -> count), queue_depth, in_flight (list), oldest_pending_age_seconds
    (float or None), paused
    (scope -> {reason, message, since}), observer_restarts, watched (paths), watched_missing (path ->
    why), incomplete_too_long, uptime_seconds.
    A missing key reads as zero/empty, so an older or partial snapshot never breaks a scrape.
    `outcomes` returns the folder outcome counts by (application_id, outcome, reason). `health` is the
    /healthz answer (`Health.health`), called on every scrape for nextmv_watcher_healthy.
    """

    def __init__(self, status: Status, outcomes: Callable[[], Mapping[tuple[str, str, str], int]],
                 health: Health) -> None:
        self.registry = CollectorRegistry()
        self._upload_bytes = Counter(f"{PREFIX}upload_bytes", "Bytes uploaded to presigned URLs.",
                                     registry=self.registry)
        self._requests = Histogram(f"{PREFIX}request_duration_seconds",
                                   "Nextmv API and upload request attempts by endpoint and HTTP status.",
                                   ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self._refused = Counter(f"{PREFIX}metrics_connections_refused",
                                "Connections to the metrics listener closed unserved: too many were open.",
                                registry=self.registry)
        Info(f"{PREFIX}build", "The running nextmv-watcher's version (always 1).",
             registry=self.registry).info({"version": __version__})
        self.registry.register(StatusCollector(status))
        self.registry.register(OutcomesCollector(outcomes))
        self.registry.register(HealthCollector(health))
        ProcessCollector(registry=self.registry)

    def upload_bytes(self, n: int) -> None:
        """Count `n` uploaded bytes (n >= 0, else ValueError)."""
        self._upload_bytes.inc(n)

    def uploaded_bytes(self) -> int:
        """The bytes counted so far."""
        return int(self.registry.get_sample_value(f"{PREFIX}upload_bytes_total") or 0)

    def request(self, outcome: RequestOutcome) -> None:
        """Observe one HTTP attempt; fits `NextmvClient(observer=...)`."""
        status = "none" if outcome.status is None else str(outcome.status)
        self._requests.labels(endpoint=outcome.endpoint, status=status).observe(outcome.seconds)

    def connection_refused(self) -> None:
        """Count one connection the listener closed unserved (it was at `MAX_CONNECTIONS`)."""
        self._refused.inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format (served as CONTENT_TYPE_LATEST)."""
        return _generate_latest(self.registry)


class Exposition(Protocol):
    """What the listener serves on /metrics: a `Metrics`, or the supervisor's merge of its processes'."""

    def render(self) -> bytes: ...

    def connection_refused(self) -> None: ...


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class HealthServer:
    """The HTTP listener for /metrics and /healthz, on a daemon thread.

    `listen` is "host:port" ("[::1]:9464" for IPv6; port 0 picks a free one, see `port`).
    `health` returns (healthy, details); details are merged into the JSON body, and an unhealthy
    answer should carry "reasons" (a list of strings). `start()` binds (raising OSError when the
    address is taken) and serves; `stop()` cuts open connections, closes the socket and joins the
    threads. A server is started at most once. `max_connections` and `connection_seconds` bound
    what clients can hold (see the module docstring); tests shorten them.
    """

    def __init__(self, listen: str, metrics: Exposition, health: Health, *, max_connections: int = MAX_CONNECTIONS,
                 connection_seconds: float = CONNECTION_SECONDS) -> None:
        if max_connections < 1 or connection_seconds <= 0:
            raise ValueError("max_connections must be >= 1 and connection_seconds > 0")
        self.host, self.port = parse_listen(listen)
        self.metrics = metrics
        self.health = health
        self.max_connections = max_connections
        self.connection_seconds = connection_seconds
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


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose loop sleeps until a connection, a connection's deadline or `wake()`:
    unlike serve_forever it neither wakes up twice a second while idle nor makes `stop()` wait for
    the next poll. It admits at most `owner.max_connections` connections at once and shuts down
    each one `owner.connection_seconds` after accepting it (which ends its handler's blocking read
    or write); only this loop cuts connections, and only while holding `_lock`, under which a
    finished connection is forgotten before it is closed, so a reused descriptor is never cut."""

    daemon_threads = True
    timeout = 0.0   # handle_request() must not block if the connection that woke us vanished
    # socketserver's default backlog of 5 overflowed under a burst (measured: 60 connections opened at
    # once took 9 s, the kernel dropping SYNs that are retransmitted after 1 s; 3 ms with 64), and a
    # scraper connecting during a flood of refused connections would wait as long.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: HealthServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}   # open connections -> when to cut them
        self._wake_r, self._wake_w = socket.socketpair()   # before binding: a failed bind calls server_close
        super().__init__(address, handler)

    def serve_until_woken(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select(self._cut_overdue())}
                if self._wake_r in ready:
                    return
                if self in ready:
                    self.handle_request()   # accepts the waiting connection; the handler runs on its own thread

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            admitted = len(self._deadlines) < self.owner.max_connections
            if admitted:
                self._deadlines[request] = time.monotonic() + self.owner.connection_seconds
        if not admitted:
            self.owner.metrics.connection_refused()
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        threading.current_thread().name = CONNECTION_THREAD   # one per admitted connection
        super().process_request_thread(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def _cut_overdue(self, *, everything: bool = False) -> float | None:
        """Shut down the connections past their deadline (all of them with `everything`); return the
        seconds until the next deadline, or None when no connection is open."""
        now = time.monotonic()
        with self._lock:
            for conn, deadline in self._deadlines.items():
                if deadline <= now or everything:
                    self._deadlines[conn] = float("inf")   # cut once; the slot is free when its thread ends
                    with contextlib.suppress(OSError):   # the client hung up already
                        conn.shutdown(socket.SHUT_RDWR)
            pending = [d for d in self._deadlines.values() if d != float("inf")]
        return max(0.0, min(pending) - now) if pending else None

    def wake(self) -> None:
        self._wake_w.send(b"x")

    def server_close(self) -> None:
        self._cut_overdue(everything=True)   # so that joining the handler threads does not wait for clients
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
        except ConnectionError:   # the client hung up, or was cut at its deadline: no one to answer
            log.debug("metrics_connection_lost", path=path)
            self.close_connection = True
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
