"""Operations: systemd notifications, reload, metrics and health, status, shared volumes, after tracking.

The real daemon process against the emulator, except where the test needs to reach inside
(health with a stopped observer), where the Service runs in-process.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import (
    API_KEY,
    METRICS_REFUSED,
    Daemon,
    closed_by_server,
    connect_many,
    marker,
    scrape_ok,
    wait_for,
    write_config,
    write_folder,
)
from prometheus_client.parser import text_string_to_metric_families

from watcher import __version__
from watcher.config import load_config
from watcher.daemon.metrics import MAX_CONNECTIONS
from watcher.daemon.service import Service
from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _event(daemon: Daemon, name: str) -> dict:  # type: ignore[type-arg]
    return next(e for e in daemon.events() if e.get("event") == name)


def test_notify_socket_gets_ready_status_watchdog_and_stopping(cloud: FakeCloud, watched: Path, tmp_path: Path,
                                                              daemon_factory) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    messages: list[str] = []
    try:
        daemon = daemon_factory([(watched, "app-1")],
                                env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}).start()

        def received(prefix: str) -> bool:
            while not any(m.startswith(prefix) or f"\n{prefix}" in m for m in messages):
                messages.append(sock.recv(4096).decode())
            return True

        received("READY=1")
        received("WATCHDOG=1")
        received("STATUS=queue")
        assert daemon.stop() == 0
        received("STOPPING=1")
    finally:
        sock.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=" in ready


def test_sighup_adds_a_watched_path_and_a_bad_reload_keeps_the_old_config(cloud: FakeCloud, watched: Path,
                                                                         tmp_path: Path) -> None:
    second = tmp_path / "second"
    second.mkdir()
    config = write_config(tmp_path / "reload.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state")
    daemon = Daemon(config, tmp_path / "reload.log").start()
    try:
        daemon.wait_ready()
        raw = yaml.safe_load(config.read_text())
        raw["watch"].append({"path": str(second), "application_id": "app-2"})
        raw["logging"]["level"] = "warning"
        config.write_text(yaml.safe_dump(raw))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config_reloaded" in daemon.names(), 20, "the reload")
        assert _event(daemon, "config_reloaded")["added"] == [str(second)]
        write_folder(second, "new-path", {"input.json": "{}", "output.json": "{}"})
        wait_for(lambda: marker(second / "new-path"), 20, "a folder in the added path")
        assert cloud.runs()[-1].application_id == "app-2"
        tracked = [e for e in daemon.events() if e.get("event") == "run_tracked"]
        assert not [e for e in tracked if "new-path" in e["folder"]], "the reloaded log level hides info events"
        # The rescan a reload asks for is expected: info, hidden at the warning level (it was a warning).
        assert "rescanning" not in daemon.names()

        config.write_text(config.read_text() + "\nbogus_key: 1\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload_failed" in daemon.names(), 20, "the failed reload")
        assert "bogus_key" in _event(daemon, "reload_failed")["error"]
        write_folder(watched, "after-bad-reload", {"input.json": "{}", "output.json": "{}"})
        wait_for(lambda: marker(watched / "after-bad-reload"), 20, "still tracking on the old config")
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0


def test_metrics_are_scraped_and_status_answers_from_the_daemon(cloud: FakeCloud, watched: Path,
                                                                daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory([(watched, "app-1")], metrics={"listen": "127.0.0.1:0"},
                            control_socket=str(tmp_path / "control.sock")).start()
    daemon.wait_ready()
    write_folder(watched, "m-1", {"input.json": "{}", "output.json": "{}"})
    write_folder(watched, "bad", {"output.json": "{}"})
    wait_for(lambda: marker(watched / "m-1") and marker(watched / "bad", ".nextmv-failed.json"), 20, "outcomes")
    port = _event(daemon, "metrics_listening")["port"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    folders = {(s.labels["outcome"], s.labels["application_id"]): s.value
               for s in families["nextmv_watcher_folders"].samples if s.name.endswith("_total")}
    assert folders[("tracked", "app-1")] == 1
    assert folders[("failed", "app-1")] == 1
    assert any(s.value > 0 for s in families["nextmv_watcher_upload_bytes"].samples)
    durations = [s for s in families["nextmv_watcher_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["endpoint"] == "create_run"]
    assert durations and durations[0].value == 1
    # The adaptive limit of folders in flight: within workers (4 here), at least one.
    (limit,) = [s.value for s in families["nextmv_watcher_concurrency_limit"].samples]
    assert 1 <= limit <= 4
    # No 429: API calls are not paced (the gauge's 0).
    assert [s.value for s in families["nextmv_watcher_api_rate_limit"].samples] == [0]
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    # The version, for dashboards and logs; the listener announced once.
    assert [s.labels for s in families["nextmv_watcher_build_info"].samples] == [{"version": __version__}]
    assert _event(daemon, "daemon_started")["version"] == __version__
    assert [e["event"] for e in daemon.events()].count("metrics_listening") == 1

    out = subprocess.run([sys.executable, "-m", "watcher", "status", "--json", "--config", str(daemon.config)],
                         capture_output=True, text=True, timeout=30, check=True)
    status = json.loads(out.stdout)
    assert status["counters"]["tracked"] == 1
    assert status["counters"]["failed"] == 1
    assert status["recent_failures"][0]["folder"].endswith("/bad")
    assert status["observer_alive"] is True
    assert status["concurrency"]["mode"] == "adaptive" and status["concurrency"]["workers"] == 4
    assert 1 <= status["concurrency"]["limit"] <= 4
    assert status["api_rate_limit"] is None
    text_status = subprocess.run([sys.executable, "-m", "watcher", "status", "--config", str(daemon.config)],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    assert re.search(r"^concurrency: \d+ folders at once \(adaptive, workers 4\)", text_status, re.MULTILINE)
    assert re.search(r"^API calls: not paced$", text_status, re.MULTILINE)
    assert daemon.stop() == 0


def test_healthz_goes_unhealthy_when_the_observer_stops(cloud: FakeCloud, watched: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = write_config(tmp_path / "health.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                               metrics={"listen": "127.0.0.1:0"}, control_socket=str(tmp_path / "c.sock"))
    service = Service(load_config(config_path), API_KEY)
    service.start()
    try:
        assert service.listeners.health_server is not None
        url = f"http://127.0.0.1:{service.listeners.health_server.port}/healthz"
        assert httpx.get(url, timeout=5).status_code == 200
        service.detectors.stop()
        resp = httpx.get(url, timeout=5)
        assert resp.status_code == 503
        assert "observer not running" in resp.json()["reasons"]
    finally:
        service.shutdown()


def test_two_daemons_on_one_directory_track_each_folder_once(cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    daemons = []
    for i in range(2):
        config = write_config(tmp_path / f"host-{i}.yaml", cloud.url, [(watched, "app-1")], tmp_path / f"state-{i}",
                              control_socket=str(tmp_path / f"c{i}.sock"))
        daemons.append(Daemon(config, tmp_path / f"host-{i}.log").start())
    cloud.set_faults(latency_seconds=0.01)
    names = [f"shared-{i:02d}" for i in range(30)]
    try:
        for n in names:
            write_folder(watched, n, {"input.json": "{}", "output.json": "{}"})
        wait_for(lambda: all(marker(watched / n) for n in names), 60, "all tracked")
    finally:
        for d in daemons:
            assert d.stop() == 0
    counts = Counter(r.body["name"] for r in cloud.runs())
    assert counts == Counter(dict.fromkeys(names, 1))
    tracked_by = [sum(1 for e in d.events() if e.get("event") == "run_tracked") for d in daemons]
    assert sum(tracked_by) == len(names)


@pytest.mark.parametrize("action", ["move", "delete"])
def test_after_tracking_moves_or_deletes(cloud: FakeCloud, watched: Path, tmp_path: Path, daemon_factory,
                                         action: str) -> None:
    done = tmp_path / "done"
    done.mkdir()
    daemon = daemon_factory([(watched, "app-1")], after_tracking=action, done_path=str(done)).start()
    daemon.wait_ready()
    write_folder(watched, "finished", {"input.json": "{}", "output.json": "{}"})
    wait_for(lambda: not (watched / "finished").exists(), 20, "the folder to leave the watched path")
    if action == "move":
        assert marker(done / "finished") is not None
        assert (done / "finished" / "input.json").read_text() == "{}"
    else:
        assert list(done.iterdir()) == []
    assert len(cloud.runs()) == 1
    assert daemon.stop() == 0


def test_polling_watched_path_is_tracked(cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "poll.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state")
    raw = yaml.safe_load(config.read_text())
    raw["watch"][0].update({"polling": True, "poll_interval_seconds": 0.2})
    config.write_text(yaml.safe_dump(raw))
    daemon = Daemon(config, tmp_path / "poll.log").start()
    try:
        daemon.wait_ready()
        write_folder(watched, "polled", {"input.json": "{}", "output.json": "{}"})
        wait_for(lambda: marker(watched / "polled"), 20, "tracked by polling")
    finally:
        assert daemon.stop() == 0


def test_json_logs_carry_journald_priorities_under_systemd(cloud: FakeCloud, watched: Path,
                                                           daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")], env={"JOURNAL_STREAM": "8:1234"}).start()
    write_folder(watched, "bad", {"output.json": "{}"})
    wait_for(lambda: marker(watched / "bad", ".nextmv-failed.json"), 20, "failed marker")
    assert daemon.stop() == 0
    lines = daemon.log_path.read_text().splitlines()
    errors = [line for line in lines if '"folder_failed"' in line]
    assert errors and all(line.startswith("<3>{") for line in errors)
    assert any(line.startswith("<6>{") and '"daemon_started"' in line for line in lines)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "nextmv-watcher.service").read_text()
    exe = Path(sys.executable).with_name("nextmv-watcher")
    if not exe.exists():
        pytest.skip("console script not installed")
    local = tmp_path / "nextmv-watcher.service"
    local.write_text(unit.replace("/opt/nextmv-watcher/bin/nextmv-watcher", str(exe)))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60,
                            check=False)
    problems = [line for line in result.stderr.splitlines() if "nextmv-watcher.service" in line]
    assert result.returncode == 0 and not problems, result.stderr
    for key in ("Type=notify", "WatchdogSec=", "RestartPreventExitStatus=2", "LoadCredential=nextmv-api-key",
                "ProtectSystem=strict", "ExecStartPre=", "RuntimeDirectory=", "RequiresMountsFor="):
        assert key in unit


# -- the metrics listener and the key under a real daemon ---------------------------------------------------


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_the_daemon_holds_at_most_the_cap_of_idle_connections(watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory([(watched, "app-1")], metrics={"listen": "127.0.0.1:0"}).start()
    daemon.wait_ready()
    assert daemon.proc is not None
    port = next(e["port"] for e in daemon.events() if e.get("event") == "metrics_listening")
    assert scrape_ok(port)
    before = _threads(daemon.proc.pid)
    idle = connect_many(port, 100)
    try:
        closed: set[socket.socket] = set()
        wait_for(lambda: len(closed_by_server(idle, closed)) == 100 - MAX_CONNECTIONS, 20,
                 "the connections beyond the cap closed")
        # Not one thread per connection (that would be 100 more). The slack is for the daemon's own
        # threads, which come and go (an upload executor's thread, a timer).
        assert _threads(daemon.proc.pid) <= before + MAX_CONNECTIONS + 4
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: scrape_ok(port), 20, "a scrape served once the idle clients hung up")
    folder = write_folder(watched, "still-tracking", {"input.json": "{}", "output.json": "{}"})
    wait_for(lambda: marker(folder), 30, "a folder tracked")
    with httpx.Client(timeout=5.0) as client:
        text = client.get(f"http://127.0.0.1:{port}/metrics").text
    refused = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == METRICS_REFUSED]
    assert refused and refused[0] >= 100 - MAX_CONNECTIONS
    assert daemon.stop() == 0


SCRUBBED_KEY = "scrub-me-7d41c0e9b2"


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_the_daemon_drops_the_key_from_its_environment_and_still_uses_it(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    cloud.set_api_keys([SCRUBBED_KEY])    # only this key works, so a tracked folder proves the daemon kept it
    daemon = daemon_factory([(watched, "app-1")], env={"NEXTMV_API_KEY": SCRUBBED_KEY, "NEXTMV_TEST_VISIBLE": "yes"})
    daemon.start()
    daemon.wait_ready()
    assert daemon.proc is not None
    block = Path(f"/proc/{daemon.proc.pid}/environ").read_bytes()
    assert b"NEXTMV_TEST_VISIBLE=yes" in block, "we read the daemon's real environment block"
    assert SCRUBBED_KEY.encode() not in block

    folder = write_folder(watched, "after-scrub", {"input.json": '{"a": 1}', "output.json": '{"b": 2}'})
    wait_for(lambda: marker(folder), 30, "the folder tracked with the key")
    assert len(cloud.runs("app-1")) == 1
    assert "api_key_left_in_environment" not in daemon.names()
    assert daemon.stop() == 0
