"""Metrics and /healthz, scraped over real HTTP on loopback and parsed with prometheus-client's parser."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import METRICS_REFUSED, closed_by_server, connect_many, scrape_ok, wait_for
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from watcher.cloud.client import RequestOutcome
from watcher.daemon.metrics import CONNECTION_THREAD, MAX_CONNECTIONS, HealthServer, Metrics
from watcher.daemon.outcomes import Outcomes
from watcher.errors import TransientError

Labels = tuple[tuple[str, str], ...]


class Daemon:
    """Stands in for the service: a mutable status snapshot, its outcome counts and a switchable health
    answer."""

    def __init__(self) -> None:
        self.outcomes = Outcomes(lambda: 1.0)
        self.state: dict[str, Any] = {
            "queue_depth": 0, "in_flight": [], "oldest_pending_age_seconds": None, "paused": {},
            "observer_restarts": 0, "incomplete_too_long": 0, "uptime_seconds": 1.5,
        }
        self.healthy = True
        self.details: dict[str, Any] = {"observers_alive": True}

    def status(self) -> dict[str, Any]:
        return dict(self.state)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self.healthy, dict(self.details)


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
def metrics(daemon: Daemon) -> Metrics:
    return Metrics(daemon.status, daemon.outcomes.series, daemon.health)


@pytest.fixture
def server(metrics: Metrics, daemon: Daemon) -> Iterator[HealthServer]:
    with HealthServer("127.0.0.1:0", metrics, daemon.health) as srv:
        yield srv


@pytest.fixture
def http(server: HealthServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10.0) as client:
        yield client


def scrape(http: httpx.Client) -> dict[str, dict[Labels, float]]:
    """GET /metrics -> {sample name: {sorted labels: value}}."""
    resp = http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_counters_move(metrics: Metrics, daemon: Daemon, http: httpx.Client) -> None:
    before = scrape(http)
    assert "nextmv_watcher_folders_total" not in before
    assert value(before, "nextmv_watcher_upload_bytes_total") == 0

    daemon.outcomes.record(Path("/runs/a1"), "app-a", "tracked", "")
    daemon.outcomes.record(Path("/runs/a2"), "app-a", "tracked", "")
    daemon.outcomes.record(Path("/runs/a3"), "app-a", "failed", "invalid")
    daemon.outcomes.record(Path("/runs/b1"), "app-b", "retried", "transient")
    metrics.upload_bytes(1000)
    metrics.upload_bytes(24)

    after = scrape(http)
    assert after["nextmv_watcher_folders_total"] == {
        (("application_id", "app-a"), ("outcome", "tracked"), ("reason", "")): 2,
        (("application_id", "app-a"), ("outcome", "failed"), ("reason", "invalid")): 1,
        (("application_id", "app-b"), ("outcome", "retried"), ("reason", "transient")): 1,
    }
    assert value(after, "nextmv_watcher_upload_bytes_total") == 1024


def test_request_histogram_by_endpoint_and_status(metrics: Metrics, http: httpx.Client) -> None:
    metrics.request(RequestOutcome("post_run", 201, 0.03, None))
    metrics.request(RequestOutcome("post_run", 201, 0.2, None))
    metrics.request(RequestOutcome("put", None, 12.0, TransientError))

    s = scrape(http)
    assert value(s, "nextmv_watcher_request_duration_seconds_count", endpoint="post_run", status="201") == 2
    assert value(s, "nextmv_watcher_request_duration_seconds_sum", endpoint="post_run", status="201") == \
        pytest.approx(0.23)
    assert value(s, "nextmv_watcher_request_duration_seconds_bucket", endpoint="post_run", status="201",
                 le="0.05") == 1
    assert value(s, "nextmv_watcher_request_duration_seconds_count", endpoint="put", status="none") == 1
    assert value(s, "nextmv_watcher_request_duration_seconds_bucket", endpoint="put", status="none",
                 le="10.0") == 0


def test_gauges_follow_the_status_snapshot(daemon: Daemon, http: httpx.Client) -> None:
    s = scrape(http)
    assert value(s, "nextmv_watcher_queue_depth") == 0
    assert value(s, "nextmv_watcher_in_flight") == 0
    assert value(s, "nextmv_watcher_oldest_pending_age_seconds") == 0
    assert s["nextmv_watcher_api_paused"] == {(("scope", "all"),): 0}
    assert value(s, "nextmv_watcher_observer_restarts_total") == 0
    assert value(s, "nextmv_watcher_incomplete_too_long") == 0
    assert value(s, "nextmv_watcher_up") == 1
    assert value(s, "nextmv_watcher_uptime_seconds") == 1.5

    daemon.state.update(
        queue_depth=7, in_flight=["/runs/a", "/runs/b"], oldest_pending_age_seconds=42.5,
        paused={"app-b": {"reason": "application_not_found", "message": "no such app", "since": 1.0}},
        observer_restarts=2, incomplete_too_long=3, uptime_seconds=600.0,
        concurrency={"mode": "adaptive", "limit": 13, "workers": 32, "in_flight": 2},
    )
    s = scrape(http)
    assert value(s, "nextmv_watcher_concurrency_limit") == 13
    assert value(s, "nextmv_watcher_queue_depth") == 7
    assert value(s, "nextmv_watcher_in_flight") == 2
    assert value(s, "nextmv_watcher_oldest_pending_age_seconds") == 42.5
    assert s["nextmv_watcher_api_paused"] == {(("scope", "app-b"),): 1}
    assert value(s, "nextmv_watcher_observer_restarts_total") == 2
    assert value(s, "nextmv_watcher_incomplete_too_long") == 3
    assert value(s, "nextmv_watcher_uptime_seconds") == 600

    daemon.state["paused"] = {"*": {"reason": "auth", "message": "key rejected", "since": 2.0},
                              "app-b": {"reason": "application_not_found", "message": "", "since": 1.0}}
    s = scrape(http)
    assert s["nextmv_watcher_api_paused"] == {(("scope", "all"),): 1, (("scope", "app-b"),): 1}


def test_a_partial_status_never_breaks_a_scrape(daemon: Daemon, http: httpx.Client) -> None:
    daemon.state = {"queue_depth": 4}
    s = scrape(http)
    assert value(s, "nextmv_watcher_queue_depth") == 4
    assert value(s, "nextmv_watcher_in_flight") == 0
    assert s["nextmv_watcher_api_paused"] == {(("scope", "all"),): 0}
    assert value(s, "nextmv_watcher_up") == 1


def test_a_failing_status_answers_500_and_the_listener_survives(daemon: Daemon, http: httpx.Client) -> None:
    daemon.state = None  # type: ignore[assignment]   # status() raises TypeError: a bug in the daemon
    with capture_logs() as logs:
        assert http.get("/metrics").status_code == 500
    assert [e["event"] for e in logs] == ["metrics_request_failed"]
    daemon.state = {"queue_depth": 1}
    assert value(scrape(http), "nextmv_watcher_queue_depth") == 1


def test_own_registry_not_the_global_one(daemon: Daemon) -> None:
    # Two on one registry would raise DuplicateTimeseries.
    a, b = (Metrics(daemon.status, daemon.outcomes.series, daemon.health),
            Metrics(daemon.status, daemon.outcomes.series, daemon.health))
    a.upload_bytes(5)
    assert a.registry is not b.registry
    assert REGISTRY.get_sample_value("nextmv_watcher_upload_bytes_total") is None
    assert b.registry.get_sample_value("nextmv_watcher_upload_bytes_total") == 0
    assert a.registry.get_sample_value("nextmv_watcher_upload_bytes_total") == 5
    assert b"nextmv_watcher_upload_bytes_total 5.0" in a.render()


def test_unknown_folder_outcome_is_refused(daemon: Daemon) -> None:
    with pytest.raises(ValueError, match="unknown folder outcome 'done'"):
        daemon.outcomes.record(Path("/runs/x"), "app", "done", "")


def test_pending_folders_are_exported_in_every_state(daemon: Daemon, http: httpx.Client) -> None:
    s = scrape(http)
    assert s["nextmv_watcher_folders_pending"] == {(("state", st),): 0 for st in
                                                   ("queued", "in_flight", "retry_wait", "parked")}
    daemon.state["folders"] = {"queued": 3, "in_flight": 2, "retry_wait": 1, "parked": 8}
    s = scrape(http)
    assert s["nextmv_watcher_folders_pending"] == {
        (("state", "queued"),): 3, (("state", "in_flight"),): 2, (("state", "retry_wait"),): 1,
        (("state", "parked"),): 8}


def test_healthz_healthy(http: httpx.Client) -> None:
    resp = http.get("/healthz")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"healthy": True, "observers_alive": True}


def test_healthz_unhealthy_with_reasons(daemon: Daemon, http: httpx.Client) -> None:
    daemon.healthy = False
    daemon.details = {"reasons": ["observer stopped", "API paused for 301 s"], "observers_alive": False}
    resp = http.get("/healthz")
    assert resp.status_code == 503
    assert resp.json() == {"healthy": False, "reasons": ["observer stopped", "API paused for 301 s"],
                           "observers_alive": False}

    daemon.healthy, daemon.details = False, {}
    assert http.get("/healthz").json() == {"healthy": False, "reasons": []}

    daemon.healthy, daemon.details = True, {}
    assert http.get("/healthz").status_code == 200


def test_the_healthy_gauge_is_the_healthz_answer_at_scrape_time(daemon: Daemon, http: httpx.Client) -> None:
    assert value(scrape(http), "nextmv_watcher_healthy") == 1
    assert http.get("/healthz").status_code == 200

    daemon.healthy, daemon.details = False, {"reasons": ["a worker thread died"]}
    assert value(scrape(http), "nextmv_watcher_healthy") == 0
    assert http.get("/healthz").status_code == 503

    daemon.healthy = True   # read again on every scrape, never cached
    assert value(scrape(http), "nextmv_watcher_healthy") == 1


@pytest.mark.parametrize("path", ["/", "/metrics/extra", "/health", "/favicon.ico"])
def test_other_paths_are_404(http: httpx.Client, path: str) -> None:
    assert http.get(path).status_code == 404


def test_query_strings_are_ignored(http: httpx.Client) -> None:
    assert http.get("/healthz?verbose=1").status_code == 200
    assert http.get("/metrics", params={"name[]": "x"}).status_code == 200


def test_requests_are_not_logged_to_stderr(http: httpx.Client, capfd: pytest.CaptureFixture[str]) -> None:
    http.get("/metrics")
    http.get("/nope")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_stop_frees_the_port(metrics: Metrics, daemon: Daemon) -> None:
    srv = HealthServer("127.0.0.1:0", metrics, daemon.health)
    srv.start()
    port = srv.port
    assert port != 0
    with httpx.Client(timeout=10.0) as client:
        assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    srv.stop()
    srv.stop()   # idempotent
    with httpx.Client(timeout=10.0) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/healthz")
    # The port can be listened on again (SO_REUSEADDR, as a restarted daemon binds; a listener still
    # open would make this fail with EADDRINUSE).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_a_fixed_port_is_used_and_a_taken_one_raises(metrics: Metrics, daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            HealthServer(f"127.0.0.1:{port}", metrics, daemon.health).start()
    with HealthServer(f"127.0.0.1:{port}", metrics, daemon.health) as srv, httpx.Client(timeout=10.0) as client:
        assert srv.port == port
        assert client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_ipv6_listen(metrics: Metrics, daemon: Daemon) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this environment")
    try:
        srv = HealthServer("[::1]:0", metrics, daemon.health)
        srv.start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        with httpx.Client(timeout=10.0) as client:
            assert client.get(f"http://[::1]:{srv.port}/healthz").status_code == 200
    finally:
        srv.stop()


def test_a_server_starts_once(metrics: Metrics, daemon: Daemon) -> None:
    srv = HealthServer("127.0.0.1:0", metrics, daemon.health)
    srv.stop()   # before start: a no-op
    with pytest.raises(RuntimeError, match="stopped"):
        srv.start()
    with HealthServer("127.0.0.1:0", metrics, daemon.health) as running, pytest.raises(RuntimeError, match="running"):
        running.start()


# --- the listener's bounds ------------------------------------------------------------------------------

def _connection_threads() -> int:
    return sum(t.name == CONNECTION_THREAD for t in threading.enumerate())


def test_connections_beyond_the_cap_are_closed_at_once_and_get_no_thread(metrics: Metrics, daemon: Daemon) -> None:
    with HealthServer("127.0.0.1:0", metrics, daemon.health, connection_seconds=60.0) as srv:
        assert scrape_ok(srv.port)
        wait_for(lambda: _connection_threads() == 0, 10, "the scrape's thread ended")
        idle = connect_many(srv.port, MAX_CONNECTIONS + 24)
        try:
            closed: set[socket.socket] = set()
            wait_for(lambda: len(closed_by_server(idle, closed)) == 24, 10, "24 connections closed at once")
            assert metrics.registry.get_sample_value(METRICS_REFUSED) == 24
            wait_for(lambda: _connection_threads() == MAX_CONNECTIONS, 10, "one thread per admitted connection")
            assert not scrape_ok(srv.port), "all slots are held by idle clients"
            assert _connection_threads() == MAX_CONNECTIONS, "a refused connection gets no thread"
        finally:
            for s in idle:
                s.close()
        # The idle clients hang up: their threads end and scrapes are served again.
        wait_for(lambda: _connection_threads() == 0, 10, "the handler threads ended")
        wait_for(lambda: scrape_ok(srv.port), 10, "a scrape served again")
        assert metrics.registry.get_sample_value(METRICS_REFUSED) == 25


def test_idle_and_trickling_connections_are_cut_at_their_deadline(metrics: Metrics, daemon: Daemon) -> None:
    with capture_logs() as events, \
            HealthServer("127.0.0.1:0", metrics, daemon.health, max_connections=2, connection_seconds=0.5) as srv:
        idle, slow = connect_many(srv.port, 2)
        try:
            slow.settimeout(0.05)
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            cut = False
            while not cut and time.monotonic() - started < 8:
                try:   # one header line whenever 50 ms pass without an answer: never idle for 10 s
                    cut = slow.recv(1) == b""
                except TimeoutError:
                    slow.sendall(b"X-Slow: 1\r\n")
                except ConnectionError:
                    cut = True
            assert cut, "a client that keeps sending is cut too"
            assert time.monotonic() - started < 5
            closed: set[socket.socket] = set()
            wait_for(lambda: idle in closed_by_server([idle], closed), 5, "the idle connection cut")
            wait_for(lambda: scrape_ok(srv.port), 10, "a scrape served once the slots are free")
        finally:
            idle.close()
            slow.close()
    assert [e for e in events if e["log_level"] in ("error", "critical")] == [], "a cut client is not an error"


def test_stop_does_not_wait_for_an_idle_client(metrics: Metrics, daemon: Daemon) -> None:
    srv = HealthServer("127.0.0.1:0", metrics, daemon.health, connection_seconds=60.0)
    srv.start()
    (idle,) = connect_many(srv.port, 1)
    with idle:
        wait_for(lambda: _connection_threads() == 1, 5, "the idle connection's thread")
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 5
        closed: set[socket.socket] = set()
        wait_for(lambda: idle in closed_by_server([idle], closed), 5, "the idle client sees the connection closed")


def test_the_listener_bounds_must_be_positive(metrics: Metrics, daemon: Daemon) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        HealthServer("127.0.0.1:0", metrics, daemon.health, max_connections=0)
    with pytest.raises(ValueError, match="connection_seconds"):
        HealthServer("127.0.0.1:0", metrics, daemon.health, connection_seconds=0)


def test_each_watched_path_is_exported_as_present_or_missing(daemon: Daemon, http: httpx.Client) -> None:
    """Issue 11, item 2: one gauge per watched path, read from the status (whose owner is the observers)."""
    assert "nextmv_watcher_watched_path_present" not in scrape(http)   # an older snapshot names no path
    daemon.state.update(watched=["/runs/a", "/runs/b"], watched_missing={"/runs/b": "does not exist"})
    s = scrape(http)
    assert s["nextmv_watcher_watched_path_present"] == {(("path", "/runs/a"),): 1, (("path", "/runs/b"),): 0}
    daemon.state["watched_missing"] = {}
    assert scrape(http)["nextmv_watcher_watched_path_present"] == {(("path", "/runs/a"),): 1,
                                                                   (("path", "/runs/b"),): 1}
