"""Watched paths that come and go (issue 11, item 2): the real daemon process against the emulator.

A watched directory removed and recreated is watched again within seconds (not at the next reconcile,
which the test configuration puts a minute away); one missing at start-up does not keep the daemon from
starting or from tracking the others, and is watched as soon as it appears. While it is missing it is
logged once at error level, /healthz answers 503 naming it, and `status` and `scan` say so.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import Daemon, marker, wait_for, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e

FILES = {"input.json": '{"in": 1}', "output.json": '{"out": 1}'}
# The reconcile would find the folders too, but a minute later: every wait below is far shorter.
SLOW_RECONCILE = {"reconcile_seconds": 60, "metrics": {"listen": "127.0.0.1:0"}}


def _events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def _healthz(daemon: Daemon) -> httpx.Response:
    port = _events(daemon, "metrics_listening")[0]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def _remove(path: Path) -> bool:
    """Remove a tree the daemon may still be tidying (it drops its claim after tracking); True once gone."""
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def _command(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *args, "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=60, check=False, env=daemon.env)


def test_a_watched_directory_removed_and_recreated_tracks_a_new_folder_within_10_s(
        cloud: FakeCloud, watched: Path, daemon_factory: Any) -> None:
    daemon = daemon_factory([(watched, "app-1")], **SLOW_RECONCILE).start()
    daemon.wait_ready()
    first = write_folder(watched, "before", FILES)
    wait_for(lambda: marker(first), 10, "a folder tracked before the directory goes")

    wait_for(lambda: _remove(watched), 10, "the watched directory removed")
    missing = wait_for(lambda: _events(daemon, "watched_path_missing"), 10, "watched_path_missing")
    assert missing[0]["level"] == "error"
    assert missing[0]["path"] == str(watched)
    unhealthy = wait_for(lambda: (r := _healthz(daemon)).status_code == 503 and r, 10, "/healthz 503")
    assert any(str(watched) in reason for reason in unhealthy.json()["reasons"])
    status = json.loads(_command(daemon, "status", "--json").stdout)
    assert status["watched_missing"] == {str(watched): "does not exist"}
    assert "MISSING" in _command(daemon, "status").stdout

    watched.mkdir()
    second = write_folder(watched, "after", FILES)
    wait_for(lambda: marker(second), 10, "a folder in the recreated directory tracked")
    restored = _events(daemon, "watched_path_restored")
    assert [e["path"] for e in restored] == [str(watched)]
    assert restored[0]["level"] == "info"
    assert len(_events(daemon, "watched_path_missing")) == 1, "logged once"
    wait_for(lambda: _healthz(daemon).status_code == 200, 10, "/healthz 200 again")

    # And it stays watched: the new directory's inotify watch works, not only the scan on its return.
    third = write_folder(watched, "later", FILES)
    wait_for(lambda: marker(third), 10, "a later folder tracked")
    assert sorted(r.body["name"] for r in cloud.runs()) == ["after", "before", "later"]
    assert daemon.stop() == 0


def test_a_second_watched_path_missing_at_start_up_does_not_stop_the_first(
        cloud: FakeCloud, watched: Path, tmp_path: Path, daemon_factory: Any) -> None:
    later = tmp_path / "later"
    daemon = daemon_factory([(watched, "app-1"), (later, "app-2")], **SLOW_RECONCILE).start()
    daemon.wait_ready()
    assert [e["path"] for e in _events(daemon, "watched_path_missing")] == [str(later)]
    assert _healthz(daemon).status_code == 503

    first = write_folder(watched, "first", FILES)
    wait_for(lambda: marker(first), 10, "a folder in the present watched path tracked")

    later.mkdir()
    second = write_folder(later, "second", FILES)
    wait_for(lambda: marker(second), 10, "a folder in the watched path created after start-up tracked")
    assert {r.application_id for r in cloud.runs()} == {"app-1", "app-2"}
    assert [e["path"] for e in _events(daemon, "watched_path_restored")] == [str(later)]
    wait_for(lambda: _healthz(daemon).status_code == 200, 10, "/healthz 200 once every path exists")
    assert daemon.stop() == 0


@pytest.mark.parametrize("replacement", ["symlink", "file"])
def test_a_watched_directory_replaced_by_a_symlink_or_a_file_is_missing_and_not_followed(
        cloud: FakeCloud, watched: Path, tmp_path: Path, daemon_factory: Any, replacement: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_folder(elsewhere, "not-ours", FILES)
    daemon = daemon_factory([(watched, "app-1")], **SLOW_RECONCILE).start()
    daemon.wait_ready()

    watched.rmdir()
    if replacement == "symlink":
        watched.symlink_to(elsewhere, target_is_directory=True)
    else:
        watched.write_text("not a directory")
    wait_for(lambda: _events(daemon, "watched_path_missing"), 10, "watched_path_missing")
    daemon.proc.send_signal(signal.SIGHUP)   # a full rescan: nothing under the symlink is offered either
    wait_for(lambda: _events(daemon, "config_reloaded"), 10, "the reload")
    scan = _command(daemon, "scan")
    assert scan.returncode == 0, scan.stderr
    assert "missing" in scan.stdout + scan.stderr

    watched.unlink()
    watched.mkdir()
    ours = write_folder(watched, "ours", FILES)
    wait_for(lambda: marker(ours), 10, "a folder in the directory put back tracked")
    assert [r.body["name"] for r in cloud.runs()] == ["ours"]
    assert not (elsewhere / "not-ours" / ".nextmv-tracked.json").exists()
    assert daemon.alive()
    assert daemon.stop() == 0


def test_check_and_a_reload_accept_a_missing_watched_path_while_another_exists(
        cloud: FakeCloud, watched: Path, tmp_path: Path, daemon_factory: Any) -> None:
    daemon = daemon_factory([(watched, "app-1")], **SLOW_RECONCILE).start()
    daemon.wait_ready()
    added = tmp_path / "added"
    config = yaml.safe_load(daemon.config.read_text())
    config["watch"].append({"path": str(added), "application_id": "app-2"})
    daemon.config.write_text(yaml.safe_dump(config))

    check = _command(daemon, "check", "--offline")
    assert check.returncode == 0, check.stderr
    assert f"watch[1].path {added} does not exist" in check.stderr

    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _events(daemon, "config_reloaded"), 10, "config_reloaded")
    assert not _events(daemon, "reload_failed")
    added.mkdir()
    folder = write_folder(added, "in-added", FILES)
    wait_for(lambda: marker(folder), 10, "a folder in the path added by the reload, created after it")
    assert daemon.stop() == 0
