"""`InProcess`: process 0 of `processes`, a real Service served on a thread of the supervisor's process and
driven as the supervisor drives a child process (poll, send_signal, wait, kill). Real inotify, the emulator
on loopback."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
from helpers import API_KEY, marker, wait_for, write_config, write_folder
from structlog.testing import capture_logs

from watcher.config import SHARD_ENV, load_config
from watcher.daemon.inprocess import InProcess
from watcher.daemon.service import Service
from watcher.daemon.shard import Shard
from watcher.errors import ConfigError
from watcher.fakecloud import FakeCloud

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"solution": 7}'}


def test_it_serves_its_shard_reloads_as_its_shard_and_drains_on_sigterm(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                        processes=2, workers=4)
    env = {SHARD_ENV: "0/2"}
    built: list[Service] = []

    def build() -> Service:
        built.append(Service(load_config(path, env=env), API_KEY, config_env=env))
        return built[-1]

    proc = InProcess(build, name="process-0")
    folders = [write_folder(watched, f"run-{n}", FILES) for n in range(8)]
    own = [f for f in folders if Shard(0, 2).owns(f)]
    assert 0 < len(own) < len(folders)
    wait_for(lambda: all(marker(f) is not None for f in own), 30, "its own folders tracked")
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.01)

    write_config(path, cloud.url, [(watched, "app-1")], tmp_path / "state", processes=2, workers=6)
    proc.send_signal(signal.SIGHUP)
    service = built[0]
    wait_for(lambda: service.config.workers == 3, 20, "the reload applied")
    assert service.config.shard == (0, 2), "a reload reads the file as process 0 of 2, not as one daemon"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0 and proc.poll() == 0
    assert service.state.value == "stopped"
    assert all(marker(f) is None for f in folders if f not in own), "not its folders"
    assert len(cloud.runs("app-1")) == len(own)


def test_a_stop_sent_before_the_service_is_built_still_stops_it(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                        processes=2, workers=4)
    go = threading.Event()

    def build() -> Service:
        assert go.wait(30)
        return Service(load_config(path, env={SHARD_ENV: "0/2"}), API_KEY)

    proc = InProcess(build, name="process-0")
    proc.send_signal(signal.SIGTERM)
    go.set()
    assert proc.wait(timeout=30) == 0


def test_a_build_that_fails_is_an_exit_code_not_an_exception() -> None:
    def bad_config() -> Service:
        raise ConfigError("/etc/nextmv-watcher/config.yaml", ["workers: must be at least 1"])

    def bug() -> Service:
        raise RuntimeError("a bug")

    with capture_logs() as events:
        assert InProcess(bad_config, name="process-0").wait(timeout=30) == 2
        assert InProcess(bug, name="process-0").wait(timeout=30) == 1
    assert [(e["event"], e["log_level"]) for e in events] == [("start_failed", "error"), ("process_crashed", "error")]
    assert "workers: must be at least 1" in events[0]["error"]
