"""Prometheus for real: the alert rules under promtool, a real Prometheus server (Debian's `prometheus`)
scraping the real daemon and evaluating the rules, promtool's lint of a real scrape, and the Grafana
dashboard, whose every query runs on that server.

Needs `prometheus` and `promtool` on PATH (Debian's `prometheus` package; `.ci/run` installs it): the
tests that use one skip, saying so, when it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import Daemon, marker, wait_for, write_folder
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "contrib" / "prometheus" / "nextmv-watcher.rules.yml"
RULES_TEST = REPO / "contrib" / "prometheus" / "nextmv-watcher.rules.test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "nextmv-watcher.json"
ALERTS = {"NextmvWatcherDown", "NextmvWatcherUnhealthy", "NextmvWatcherPaused", "NextmvWatcherFoldersFailing",
          "NextmvWatcherBacklogOld", "NextmvWatcherIncompleteTooLong"}
JOB = "nextmv-watcher"   # the scrape job NextmvWatcherDown selects (the README says so)
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
INSTALL = "(Debian: apt-get install prometheus; .ci/run installs it)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool is not installed {INSTALL}")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=f"prometheus is not installed {INSTALL}")
# A series name in PromQL; `up` is the one Prometheus itself records for each target.
SERIES = re.compile(r"\b(nextmv_watcher_\w+|up)\b")


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its variables."""
    model = dashboard()
    return ([t["expr"] for p in model["panels"] for t in p["targets"]]
            + [v["definition"] for v in model["templating"]["list"] if v["type"] == "query"])


def named(exprs: list[str]) -> set[str]:
    """The series named in `exprs`, outside string literals (label values)."""
    return {name for e in exprs for name in SERIES.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', e))}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the daemon -----------------------------------------------------------------------------------------

@pytest.fixture
def busy_daemon(daemon_factory: Callable[..., Daemon], watched: Path) -> Iterator[tuple[Daemon, int]]:
    """A running daemon with a metrics listener that has tracked two folders and failed one (so every
    series, the request histogram and the failed counter included, is in its exposition)."""
    daemon = daemon_factory([(watched, "app-1")], metrics={"listen": "127.0.0.1:0"}).start()
    daemon.wait_ready()
    for name in ("p-1", "p-2"):
        write_folder(watched, name, {"input.json": "{}", "output.json": "{}"})
    write_folder(watched, "p-bad", {"output.json": "{}"})   # no input: failed (invalid)
    wait_for(lambda: marker(watched / "p-1") and marker(watched / "p-2")
             and marker(watched / "p-bad", ".nextmv-failed.json"), 20, "two folders tracked and one failed")
    port = next(e["port"] for e in daemon.events() if e.get("event") == "metrics_listening")
    yield daemon, port
    if daemon.alive():
        assert daemon.stop() == 0


def scrape(port: int) -> str:
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert resp.status_code == 200
    return resp.text


# -- the rules and the dashboard, on their own ----------------------------------------------------------

def test_the_rules_name_each_alert_with_a_for_a_severity_and_a_summary() -> None:
    found = rules()
    assert {r["alert"] for r in found} == ALERTS
    assert len(found) == len(ALERTS)
    for rule in found:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@needs_promtool
def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout
    test = promtool("test", "rules", str(RULES_TEST))
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout

    # Each alert is shown firing and not firing.
    cases = [case for t in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in t["alert_rule_test"]]
    assert {c["alertname"] for c in cases if c["exp_alerts"]} == ALERTS
    assert {c["alertname"] for c in cases if not c["exp_alerts"]} == ALERTS


def test_the_dashboard_is_a_grafana_model_with_the_promised_panels() -> None:
    model = dashboard()
    assert model["title"] and model["uid"] and isinstance(model["schemaVersion"], int)
    assert model["__inputs"] == [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                                  "description": "The Prometheus that scrapes nextmv-watcher",
                                  "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["targets"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"], p["title"]
    for variable in model["templating"]["list"]:
        assert variable["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    assert "rate(nextmv_watcher_folders_total" in by_title["Throughput by outcome"]
    assert "by (outcome)" in by_title["Throughput by outcome"]
    assert "nextmv_watcher_folders_pending" in by_title["Backlog by state"]
    assert "by (state)" in by_title["Backlog by state"]
    assert "nextmv_watcher_oldest_pending_age_seconds" in by_title["Oldest pending folder"]
    latency = by_title["Request latency by endpoint"]
    assert "histogram_quantile(" in latency and "nextmv_watcher_request_duration_seconds_bucket" in latency
    assert "by (endpoint, le)" in latency
    assert "nextmv_watcher_api_paused" in by_title["Pauses"]
    assert "nextmv_watcher_healthy" in by_title["Healthy"]


# -- a real scrape ----------------------------------------------------------------------------------------

@needs_promtool
def test_promtool_finds_no_problem_in_a_real_scrape_and_every_metric_named_exists(
        busy_daemon: tuple[Daemon, int]) -> None:
    _, port = busy_daemon
    text = scrape(port)
    lint = promtool("check", "metrics", stdin=text)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")

    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    in_rules = named([r["expr"] for r in rules()])
    in_dashboard = named(dashboard_queries())
    assert "nextmv_watcher_folders_total" in in_rules
    assert "nextmv_watcher_request_duration_seconds_bucket" in in_dashboard
    # `up` is recorded by Prometheus for each target, not exported (the next test reads it from a server).
    assert (in_rules | in_dashboard) - {"up"} - set(samples) == set()
    assert samples["nextmv_watcher_healthy"].value == 1
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200


# -- a real Prometheus ------------------------------------------------------------------------------------

class Prometheus:
    """Debian's prometheus on 127.0.0.1, its own storage, scraping one daemon every second and evaluating
    the project's rules every second."""

    def __init__(self, base: Path, target_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "prometheus.log"
        config = base / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        assert PROMETHEUS is not None
        self.command = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, f"prometheus ready on port {self.port} (log: {self.log_path})")

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"prometheus exited: {self.log_path.read_text()[-2000:]}"
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def api(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        assert (resp.status_code, body["status"]) == (200, "success"), body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> set[tuple[str, str, str]]:
        """The active alerts: (name, state, instance)."""
        return {(a["labels"]["alertname"], a["state"], a["labels"].get("instance", ""))
                for a in self.api("alerts")["alerts"]}


@pytest.fixture
def prometheus(tmp_path: Path, busy_daemon: tuple[Daemon, int]) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, busy_daemon[1])
    try:
        server.start()
        yield server
    finally:
        server.stop()
        # Shown by pytest when the test failed.
        print("--- prometheus.log (end):", server.log_path.read_text(errors="replace")[-3000:], sep="\n")


@needs_prometheus
def test_a_real_prometheus_reads_the_daemon_and_evaluates_the_rules(busy_daemon: tuple[Daemon, int],
                                                                     prometheus: Prometheus) -> None:
    daemon, port = busy_daemon
    instance = f"127.0.0.1:{port}"

    def outcomes() -> dict[str, float]:
        rows = prometheus.query(f'sum by (outcome) (nextmv_watcher_folders_total{{job="{JOB}"}})')
        return {r["metric"]["outcome"]: float(r["value"][1]) for r in rows}

    wait_for(lambda: outcomes() == {"tracked": 2.0, "failed": 1.0}, 30, "folders_total read back from prometheus")
    [healthy] = prometheus.query(f'nextmv_watcher_healthy{{job="{JOB}"}}')
    assert (healthy["metric"]["instance"], healthy["value"][1]) == (instance, "1")

    # The rules are loaded and evaluate without error against the real series.
    def evaluated() -> list[dict[str, Any]]:
        found = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return found if all(r["health"] == "ok" for r in found) and len(found) == len(ALERTS) else []

    loaded = wait_for(evaluated, 30, "every rule evaluated")
    assert {r["name"] for r in loaded} == ALERTS
    assert {(r["type"], r.get("lastError", "")) for r in loaded} == {("alerting", "")}
    # Before the first scrape NextmvWatcherDown may be pending (absent); once scraped, only the failed
    # folder is pending (its `for:` has not passed yet).
    wait_for(lambda: prometheus.alerts() == {("NextmvWatcherFoldersFailing", "pending", instance)}, 30,
             "NextmvWatcherFoldersFailing pending and nothing else active")

    # Every dashboard query runs and returns series.
    for expr in dashboard_queries():
        if expr.startswith("label_values("):
            variable = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
            assert variable, expr
            metric, label = variable.groups()
            assert prometheus.api(f"label/{label}/values", **{"match[]": metric}) == [instance]
            continue
        promql = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        wait_for(lambda q=promql: prometheus.query(q), 30, f"a result for {promql}")

    # The daemon goes away: its scrapes fail and NextmvWatcherDown is pending for its instance.
    assert daemon.stop() == 0
    wait_for(lambda: ("NextmvWatcherDown", "pending", instance) in prometheus.alerts(), 30,
             "NextmvWatcherDown pending once the daemon stopped")
