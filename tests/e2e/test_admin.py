"""Admin commands talk to the right daemon, and a daemon that cannot start says which resource is taken.

The real `nextmv-watcher run` process and the real commands, as processes: `status --config B` beside
daemon A (two configurations that leave state_dir and control_socket to the same defaults), a second
daemon on one state directory, and a metrics address that is taken. Both refusals exit 2, which the
unit's RestartPreventExitStatus=2 does not restart (tests/e2e/test_operations.py checks the unit).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import API_KEY, Daemon, marker, wait_for, write_config, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e
FILES: dict[str, str | bytes] = {"input.json": "{}", "output.json": "{}"}


def defaults_config(path: Path, cloud: FakeCloud, watched: Path, app: str) -> Path:
    """A configuration that leaves state_dir and control_socket to their defaults (the README's
    hand-run example)."""
    write_config(path, cloud.url, [(watched, app)], Path("unused"))
    raw = yaml.safe_load(path.read_text())
    del raw["state_dir"]
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "NEXTMV_API_KEY": API_KEY, **env})


def exited(daemon: Daemon) -> int:
    """The exit code of a daemon that exits by itself (stop() sends nothing to a process that has exited)."""
    assert daemon.proc is not None
    daemon.proc.wait(timeout=30)
    return daemon.stop()


def start_failed(daemon: Daemon) -> dict[str, Any]:
    return next(e for e in daemon.events() if e.get("event") == "start_failed")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """One user's environment outside systemd: the defaults under one $XDG_STATE_HOME."""
    return {"XDG_STATE_HOME": str(tmp_path / "xdg"), "STATE_DIRECTORY": "", "RUNTIME_DIRECTORY": ""}


def test_status_of_config_b_beside_daemon_a_never_shows_daemon_a(cloud: FakeCloud, tmp_path: Path,
                                                                  env: dict[str, str]) -> None:
    runs_a, runs_b = tmp_path / "runs-a", tmp_path / "runs-b"
    runs_a.mkdir()
    runs_b.mkdir()
    config_a = defaults_config(tmp_path / "a.yaml", cloud, runs_a, "app-a")
    config_b = defaults_config(tmp_path / "b.yaml", cloud, runs_b, "app-b")
    a = Daemon(config_a, tmp_path / "a.log", env=env).start()
    try:
        a.wait_ready()
        for argv in (("status", "--config", config_b), ("status", "--json", "--config", config_b)):
            b = cli(env, *argv)
            assert b.returncode == 0, b.stderr
            assert not re.search(rf"\b{a.pid}\b", b.stdout + b.stderr), "daemon A's pid"
            assert str(runs_a) not in b.stdout + b.stderr, "daemon A's watched path"
            assert f"runs another configuration ({config_a}), not {config_b}; showing a scan" in b.stderr

        mine = cli(env, "status", "--config", config_a)
        assert mine.returncode == 0, mine.stderr
        assert mine.stdout.splitlines()[0].startswith(f"daemon: running (pid {a.pid})")
        assert f"watched: {runs_a}" in mine.stdout.splitlines()
        assert "reload pending" not in mine.stdout

        config_a.write_text(config_a.read_text() + "workers: 2\n")
        assert "config: reload pending" in cli(env, "status", "--config", config_a).stdout
        os.kill(a.pid, signal.SIGHUP)
        wait_for(lambda: "config_reloaded" in a.names(), 20, "the reload")
        assert "reload pending" not in cli(env, "status", "--config", config_a).stdout
    finally:
        assert a.stop() == 0


def test_a_second_run_on_one_state_dir_exits_2_naming_the_first(cloud: FakeCloud, tmp_path: Path,
                                                                 watched: Path) -> None:
    state = tmp_path / "state"
    config_a = write_config(tmp_path / "a.yaml", cloud.url, [(watched, "app-1")], state)
    other = tmp_path / "other-runs"
    other.mkdir()
    config_b = write_config(tmp_path / "b.yaml", cloud.url, [(other, "app-2")], state,
                            control_socket=str(tmp_path / "b.sock"))
    a = Daemon(config_a, tmp_path / "a.log").start()
    try:
        a.wait_ready()
        b = Daemon(config_b, tmp_path / "b.log").start()
        assert exited(b) == 2
        event = start_failed(b)
        assert event["level"] == "error"
        assert event["error"] == (f"state_dir {state} is in use by another daemon (pid {a.pid}, config {config_a}); "
                                  "daemons on one host need their own state_dir")
        assert "daemon_started" not in b.names()
        assert not (tmp_path / "b.sock").exists()

        same = Daemon(config_a, tmp_path / "same.log").start()   # the same config twice: the same refusal
        assert exited(same) == 2
        assert f"pid {a.pid}" in start_failed(same)["error"]

        # sync and track beside the running daemon stay allowed: claims keep them apart
        folder = write_folder(watched, "by-hand", FILES, marker=None)
        tracked = cli({}, "track", folder, "--config", config_a)
        assert tracked.returncode == 0, tracked.stderr
        synced = cli({}, "sync", "--config", config_a)
        assert synced.returncode == 0, synced.stderr
        assert a.alive()
        assert f"(pid {a.pid})" in cli({}, "status", "--config", config_a).stdout
    finally:
        a.kill()   # SIGKILL: the kernel releases the lock however the daemon dies

    again = Daemon(config_b, tmp_path / "again.log").start()
    try:
        again.wait_ready()
        write_folder(other, "after", FILES)
        wait_for(lambda: marker(other / "after"), 20, "the new daemon to track a folder")
    finally:
        assert again.stop() == 0


def test_a_metrics_listen_clash_exits_2_naming_the_key_and_address(cloud: FakeCloud, tmp_path: Path,
                                                                   watched: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                              metrics={"listen": f"127.0.0.1:{port}"}, control_socket=str(tmp_path / "c.sock"))
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        assert exited(daemon) == 2
    event = start_failed(daemon)
    assert event["error"] == f"metrics.listen 127.0.0.1:{port}: address already in use"
    assert (event["key"], event["address"]) == ("metrics.listen", f"127.0.0.1:{port}")
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
    assert not (tmp_path / "c.sock").exists(), "the control socket it had bound is closed again"

    restarted = Daemon(config, tmp_path / "restarted.log").start()   # the lock and the socket are free again
    try:
        restarted.wait_ready()
    finally:
        assert restarted.stop() == 0
