"""What an operator sees stays true (issue 9): the backlog during an outage, health and pauses after a
reload, listeners moved by a reload, the backoff a reload changes, an operator's retry. The real daemon
process against the emulator, read through its metrics, /healthz, `status --json` and its log."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import API_KEY, FAILED, Daemon, marker, wait_for, write_config, write_folder
from prometheus_client.parser import text_string_to_metric_families

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e
FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1, 2]}', "output.json": b'{"value": 3}'}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def pending(port: int, state: str) -> float:
    return samples(port)["nextmv_watcher_folders_pending"][(("state", state),)]


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "watcher", "status", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def reload(daemon: Daemon, config: Path, change: dict[str, Any]) -> dict[str, Any]:
    """Rewrite `config` with `change` merged in, SIGHUP, and return the reload's event."""
    raw = yaml.safe_load(config.read_text())
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    config.write_text(yaml.safe_dump(raw))
    done = len([e for e in daemon.events() if e.get("event") in ("config_reloaded", "reload_failed")])
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    events = wait_for(lambda: [e for e in daemon.events() if e.get("event") in ("config_reloaded", "reload_failed")]
                      [done:], 20, "the reload")
    return events[0]  # type: ignore[no-any-return]


def test_an_auth_outage_shows_every_waiting_folder_as_parked_and_releases_each_once(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("a-revoked-key\n")
    port = free_port()
    config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                          api={"key_file": str(key_file)}, metrics={"listen": f"127.0.0.1:{port}"},
                          control_socket=str(tmp_path / "control.sock"))
    daemon = Daemon(config, tmp_path / "daemon.log").start()
    try:
        daemon.wait_ready()
        folders = [write_folder(watched, f"run-{i}", FILES) for i in range(8)]
        wait_for(lambda: pending(port, "parked") == 8, 30, "8 folders parked behind the rejected key")
        first = samples(port)["nextmv_watcher_oldest_pending_age_seconds"][()]
        wait_for(lambda: samples(port)["nextmv_watcher_oldest_pending_age_seconds"][()] > first + 1, 10,
                 "the oldest pending age to grow")
        st = status(config)
        assert st["folders"] == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 8}
        assert st["paused"]["*"]["reason"] == "auth"
        assert all(marker(f) is None and marker(f, FAILED) is None for f in folders)

        key_file.write_text(f"{API_KEY}\n")
        wait_for(lambda: all(marker(f) for f in folders), 90, "all 8 tracked once the key works")
        assert sorted(r.body["name"] for r in cloud.runs()) == sorted(f.name for f in folders), "each once"
        wait_for(lambda: all(pending(port, s) == 0 for s in ("queued", "in_flight", "retry_wait", "parked")),
                 10, "the backlog back to 0")
        assert [e["folders"] for e in daemon.events() if e.get("event") == "api_resumed"] == [8]
    finally:
        assert daemon.stop() == 0


def test_a_wrong_application_fixed_by_a_reload_is_tracked_and_healthy_again(tmp_path: Path) -> None:
    watched = tmp_path / "runs"
    watched.mkdir()
    port = free_port()
    with FakeCloud(api_keys=[API_KEY], applications=["right-app"]) as cloud:
        config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "wrong-app")], tmp_path / "state",
                              metrics={"listen": f"127.0.0.1:{port}", "unhealthy_pause_seconds": 1})
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            daemon.wait_ready()
            folder = write_folder(watched, "run-1", FILES)
            wait_for(lambda: samples(port)["nextmv_watcher_api_paused"].get((("scope", "wrong-app"),)) == 1, 30,
                     "the wrong application paused")
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 503, 10,
                     "unhealthy after unhealthy_pause_seconds")
            assert samples(port)["nextmv_watcher_healthy"] == {(): 0}, "the gauge says what /healthz says"

            event = reload(daemon, config, {"watch": [{"path": str(watched), "application_id": "right-app"}]})
            assert event["event"] == "config_reloaded"
            assert event["changed"] == [f"watch[{watched}].application_id"]
            assert event["restart_required"] == []
            wait_for(lambda: marker(folder), 10, "the folder tracked within 10 s of the reload")
            assert [r.application_id for r in cloud.runs()] == ["right-app"]
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            assert samples(port)["nextmv_watcher_healthy"] == {(): 1}
            paused = samples(port)["nextmv_watcher_api_paused"]
            assert paused == {(("scope", "all"),): 0}, "no series of the old application is left at 1"
            assert status(config)["paused"] == {}
        finally:
            assert daemon.stop() == 0


def test_a_reload_moves_the_listeners_and_one_that_cannot_bind_is_refused_whole(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    old_port, new_port = free_port(), free_port()
    config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                          metrics={"listen": f"127.0.0.1:{old_port}"}, control_socket=str(tmp_path / "old.sock"))
    daemon = Daemon(config, tmp_path / "daemon.log").start()
    try:
        daemon.wait_ready()
        event = reload(daemon, config, {"metrics": {"listen": f"127.0.0.1:{new_port}"},
                                        "control_socket": str(tmp_path / "new.sock")})
        assert event["event"] == "config_reloaded"
        assert sorted(event["changed"]) == ["control_socket", "metrics.listen"]
        assert httpx.get(f"http://127.0.0.1:{new_port}/metrics", timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{old_port}/metrics", timeout=5)
        assert not (tmp_path / "old.sock").exists()
        assert status(config)["pid"] == daemon.pid, "status reaches the daemon over the new socket"

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            event = reload(daemon, config, {"metrics": {"listen": f"127.0.0.1:{busy}"},
                                            "control_socket": str(tmp_path / "newer.sock"), "workers": 2})
            assert event["event"] == "reload_failed"
            assert (event["key"], event["address"]) == ("metrics.listen", f"127.0.0.1:{busy}")
        assert httpx.get(f"http://127.0.0.1:{new_port}/metrics", timeout=5).status_code == 200
        assert not (tmp_path / "newer.sock").exists(), "nothing of the refused reload stays"
        assert (tmp_path / "new.sock").exists()
        config.write_text(config.read_text().replace(f"127.0.0.1:{busy}", f"127.0.0.1:{new_port}")
                          .replace("newer.sock", "new.sock"))
        assert status(config)["workers_alive"] == 4, "the refused reload changed nothing (workers stay 4)"
    finally:
        assert daemon.stop() == 0


def test_a_reloaded_backoff_applies_to_the_next_retry(cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                          retry={"backoff_initial_seconds": 0.05, "backoff_max_seconds": 1000})
    daemon = Daemon(config, tmp_path / "daemon.log").start()
    try:
        daemon.wait_ready()
        event = reload(daemon, config, {"retry": {"backoff_initial_seconds": 300, "backoff_max_seconds": 1000}})
        assert event["changed"] == ["retry.backoff_initial_seconds"]
        cloud.set_faults(error_rate=1.0, endpoints=["uploadurl"])
        write_folder(watched, "slow", FILES)
        retry = wait_for(lambda: next((e for e in daemon.events() if e.get("event") == "folder_retrying"), None),
                         30, "the first retry")
        assert 150 <= retry["retry_in"] <= 300, "Backoff(300, 1000).delay(1) lies in [150, 300]"
    finally:
        assert daemon.stop() == 0


def test_an_operators_retry_is_counted_and_leaves_the_recent_failures(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                          metrics={"listen": f"127.0.0.1:{port}"}, control_socket=str(tmp_path / "control.sock"))
    daemon = Daemon(config, tmp_path / "daemon.log").start()
    try:
        daemon.wait_ready()
        folder = write_folder(watched, "fixed-later", {"output.json": b"{}"})   # no input: invalid
        wait_for(lambda: marker(folder, FAILED), 20, "the folder failed")
        assert [f["folder"] for f in status(config)["recent_failures"]] == [str(folder)]
        (folder / "input.json").write_bytes(b'{"stops": [1]}')   # the producer fixes it
        subprocess.run([sys.executable, "-m", "watcher", "retry", str(folder), "--config", str(config)],
                       check=True, timeout=30, capture_output=True)
        wait_for(lambda: marker(folder), 20, "the folder tracked after the retry")
        st = status(config)
        assert st["recent_failures"] == []
        assert st["counters"] == {"tracked": 1, "failed": 1, "retried": 1}
        folders = samples(port)["nextmv_watcher_folders_total"]
        assert folders[(("application_id", "app-1"), ("outcome", "retried"), ("reason", "manual"))] == 1
    finally:
        assert daemon.stop() == 0
