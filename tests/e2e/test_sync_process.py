"""`nextmv-watcher sync` as cron runs it: the real process, its exit code, stderr and log events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import API_KEY, FAILED, marker, write_config, write_folder

FILES: dict[str, str | bytes] = {"input.json": "{}", "output.json": "{}"}


def sync(config: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTMV_", "STATE_DIRECTORY", "RUNTIME_"))}
    return subprocess.run([sys.executable, "-m", "watcher", "sync", "--config", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=timeout,
                          env={**env, "NEXTMV_API_KEY": API_KEY})


def test_sync_against_a_refused_port_gives_up_after_its_timeout_naming_the_wait(
        tmp_path: Path, watched: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", [(watched, "app-1")], tmp_path / "state",
                          logging={"format": "json", "level": "info"},
                          retry={"max_attempts": 10, "backoff_initial_seconds": 5, "backoff_max_seconds": 300})
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]

    result = sync(config, "--timeout", "5", timeout=30)   # before: silent for metrics.unhealthy_pause_seconds

    assert result.returncode == 1, result.stderr
    stopped = [line for line in result.stderr.splitlines() if "sync stopped early" in line]
    assert stopped and "no progress for" in stopped[0] and "--timeout 5" in stopped[0]
    assert "no response" in stopped[0] or "has been unreachable" in stopped[0], stopped
    assert all(marker(f) is None and marker(f, FAILED) is None for f in folders)
    events = [json.loads(line)["event"] for line in result.stderr.splitlines() if line.startswith("{")]
    assert events[0] == "sync_started" or "sync_started" in events
    assert events[-1] == "sync_finished"
    assert not [e for e in events if e.startswith("daemon_")], events
    assert "not tracked yet" in result.stdout


def test_sync_timeout_must_be_a_number_of_seconds(tmp_path: Path, watched: Path) -> None:
    config = write_config(tmp_path / "c.yaml", "http://127.0.0.1:9", [(watched, "app-1")], tmp_path / "state")
    for bad in ("-1", "soon", "inf"):
        result = sync(config, "--timeout", bad, timeout=30)
        assert result.returncode == 2
        assert "--timeout" in result.stderr
