"""Metrics and /healthz, scraped over real HTTP on loopback and parsed with prometheus-client's parser."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from watcher.client import RequestOutcome
from watcher.metrics import HealthServer, Metrics, parse_listen

Labels = tuple[tuple[str, str], ...]


class Daemon:
    """Stands in for the service: a mutable status snapshot and a switchable health answer."""

    def __init__(self) -> None:
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
    return Metrics(daemon.status)


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


def test_counters_move(metrics: Metrics, http: httpx.Client) -> None:
    before = scrape(http)
    assert "nextmv_watcher_folders_total" not in before
    assert value(before, "nextmv_watcher_upload_bytes_total") == 0

    metrics.folder("app-a", "tracked", "")
    metrics.folder("app-a", "tracked", "")
    metrics.folder("app-a", "failed", "invalid")
    metrics.folder("app-b", "retried", "transient")
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
    metrics.request(RequestOutcome("put", None, 12.0, "transient"))

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
    )
    s = scrape(http)
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
    a, b = Metrics(daemon.status), Metrics(daemon.status)   # would raise DuplicateTimeseries on one registry
    a.upload_bytes(5)
    assert a.registry is not b.registry
    assert REGISTRY.get_sample_value("nextmv_watcher_upload_bytes_total") is None
    assert b.registry.get_sample_value("nextmv_watcher_upload_bytes_total") == 0
    assert a.registry.get_sample_value("nextmv_watcher_upload_bytes_total") == 5
    assert b"nextmv_watcher_upload_bytes_total 5.0" in a.render()


def test_unknown_folder_outcome_is_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="unknown folder outcome 'done'"):
        metrics.folder("app", "done", "")


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


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:port", "host:70000"])
def test_parse_listen_refuses_malformed(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)
