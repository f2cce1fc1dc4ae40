"""The admin commands and the daemon they talk to, called in-process as `main(argv)`: `check --offline`
without the key, YAML errors, and `status`, `retry` and `forget` beside a daemon of another
configuration (stood in for by a real ControlServer that identifies as that daemon; the real daemon
is in tests/e2e/test_admin.py)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FAILED, TRACKED, Run, marker, wait_for, write_config, write_folder

from watcher import config as config_module
from watcher.config import load_config
from watcher.daemon.control_socket import ControlServer
from watcher.daemon.daemonlock import DaemonLock
from watcher.daemon.identity import describe
from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import StateStore

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

FILES: dict[str, str | bytes] = {"input.json": "{}", "output.json": "{}"}
OTHER_PID = 987654


@pytest.fixture
def config(tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "b.yaml", cloud.url, [(watched, "app-1")], state_dir,
                        logging={"format": "json", "level": "info"})


@pytest.fixture
def other_runs(tmp_path: Path) -> Path:
    path = tmp_path / "a-runs"
    path.mkdir()
    return path


Stub = Callable[[Path], list[dict[str, Any]]]


@pytest.fixture
def daemon_running(config: Path) -> Iterator[Stub]:
    """daemon_running(its_config) -> the requests it gets: a daemon running `its_config` that answers
    on the socket of `config` (as two configurations sharing the default state directory do)."""
    servers: list[ControlServer] = []
    threads_before = set(threading.enumerate())

    def start(its_config: Path) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = []
        loaded = load_config(its_config)   # as it is now: a later edit is a reload pending
        status = {"state": "running", "pid": OTHER_PID, "uptime_seconds": 5, "in_flight": [], "paused": {},
                  "watched": [str(w.path) for w in loaded.watch]}

        def handle(request: dict[str, Any]) -> dict[str, Any]:
            requests.append(request)
            return {"ok": True, "status": status} if request["command"] == "status" else {"ok": True}

        path = load_config(config).control_socket
        assert path is not None
        server = ControlServer(path, handle, identify=lambda: describe(loaded, OTHER_PID))
        server.start()
        servers.append(server)
        return requests

    yield start
    for server in servers:
        server.stop()
    wait_for(lambda: not [t for t in threading.enumerate() if t not in threads_before and t.is_alive()], 5,
             "the control thread to end")


# --- check --offline and YAML errors -------------------------------------------------------------


def test_check_offline_needs_no_key_and_says_it_was_not_checked(
        run: Run, config: Path, cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTMV_API_KEY")

    result = run("check", "--offline", "--config", config)

    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"configuration {config}: ok (1 watched path(s))",
        "API key: not checked (--offline; api: no API key found (looked in $NEXTMV_API_KEY); `run` needs one)"]
    assert [r for r in cloud.requests() if r.endpoint != "control"] == []


def test_check_offline_with_a_missing_key_file_exits_0(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                       watched: Path, state_dir: Path) -> None:
    config = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], state_dir,
                          api={"key_file": str(tmp_path / "no-such-key")})

    result = run("check", "--offline", "--config", config)

    assert result.code == 0, result.err
    assert result.out.splitlines()[1].startswith("API key: not checked (--offline; api.key_file: cannot read ")


def test_check_offline_says_where_the_key_is_without_checking_it(run: Run, config: Path, cloud: FakeCloud) -> None:
    result = run("check", "--offline", "--config", config)

    assert result.code == 0, result.err
    assert result.out.splitlines()[1] == "API key: found in $NEXTMV_API_KEY, not checked (--offline)"
    assert [r for r in cloud.requests() if r.endpoint != "control"] == []


def test_check_without_offline_still_needs_the_key(run: Run, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTMV_API_KEY")

    result = run("check", "--config", config)

    assert result.code == 2
    assert "no API key found" in result.err


def test_a_yaml_error_names_the_file_line_and_column(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("api:\n  url: http://x\n watch: []\n")

    result = run("check", "--offline", "--config", path)

    assert result.code == 2
    assert result.err.splitlines() == [f"nextmv-watcher: invalid configuration {path}:",
                                       "  - not valid YAML at line 3, column 2: expected <block end>, but found "
                                       "'<block mapping start>' (while parsing a block mapping at line 1, "
                                       "column 1)"]


# --- status, retry and forget beside a daemon of another configuration --------------------------


def test_status_beside_another_configurations_daemon_shows_a_scan_of_its_own(
        run: Run, config: Path, tmp_path: Path, cloud: FakeCloud, other_runs: Path, state_dir: Path,
        daemon_running: Stub) -> None:
    a = write_config(tmp_path / "a.yaml", cloud.url, [(other_runs, "app-a")], state_dir)
    daemon_running(a)

    for argv in (("status", "--config", config), ("status", "--json", "--config", config)):
        result = run(*argv)
        assert result.code == 0, result.err
        assert str(OTHER_PID) not in result.out + result.err
        assert str(other_runs) not in result.out + result.err
        assert f"runs another configuration ({a}), not {config}; showing a scan" in result.err
    assert result.out.startswith("{")
    assert json.loads(result.out)["state"] == "not running"


def test_status_of_the_daemons_own_file_edited_since_says_reload_pending(
        run: Run, config: Path, daemon_running: Stub) -> None:
    daemon_running(config)
    assert "reload pending" not in run("status", "--config", config).out

    config.write_text(config.read_text() + "workers: 2\n")
    result = run("status", "--config", config)

    assert result.code == 0, result.err
    assert result.out.splitlines()[:2] == [
        f"daemon: running (pid {OTHER_PID}), up 0m 05s",
        "config: reload pending (the file changed since the daemon loaded it; `systemctl reload nextmv-watcher` "
        "or SIGHUP applies it)"]
    assert json.loads(run("status", "--json", "--config", config).out)["reload_pending"] is True


def test_retry_and_forget_do_not_tell_another_configurations_daemon(
        run: Run, config: Path, tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path,
        daemon_running: Stub) -> None:
    store = StateStore(state_dir)
    failed = write_folder(watched, "f", FILES)
    store.mark_failed(failed, "boom", 3, 1.0, reason="exhausted")
    tracked = write_folder(watched, "t", FILES)
    store.mark_tracked(tracked, "run-1", "app-1", 1.0)
    a = write_config(tmp_path / "a.yaml", cloud.url, [(watched, "app-a")], tmp_path / "a-state")
    requests = daemon_running(a)

    retried = run("retry", failed, "--config", config)
    forgot = run("forget", tracked, "--yes", "--config", config)

    assert (retried.code, forgot.code) == (0, 0), retried.err + forgot.err
    assert marker(failed, FAILED) is None, "the folder itself is retried"
    assert marker(tracked, TRACKED) is None, "and forgotten"
    assert [r["command"] for r in requests] == ["identify", "identify"], "asked who it is, told nothing"
    assert f"not telling the daemon on {state_dir / 'control.sock'}: it runs another configuration ({a})" \
        in retried.err


def test_retry_of_a_folder_without_a_configuration_tells_only_a_daemon_that_watches_it(
        run: Run, tmp_path: Path, cloud: FakeCloud, watched: Path, other_runs: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_STATE_HOME", str(xdg))
    monkeypatch.setenv("NEXTMV_WATCHER_CONFIG", str(tmp_path / "absent.yaml"))
    store = StateStore(xdg / "nextmv-watcher")
    failed = write_folder(watched, "f", FILES)
    store.mark_failed(failed, "boom", 3, 1.0, reason="exhausted")
    socket_path = xdg / "nextmv-watcher" / "control.sock"
    requests: list[dict[str, Any]] = []
    its = write_config(tmp_path / "a.yaml", cloud.url, [(other_runs, "app-a")], xdg / "nextmv-watcher")
    server = ControlServer(socket_path, lambda r: requests.append(r) or {"ok": True},
                           identify=lambda: describe(load_config(its), OTHER_PID))
    server.start()
    try:
        result = run("retry", failed)
    finally:
        server.stop()

    assert result.code == 0, result.err
    assert marker(failed, FAILED) is None
    assert [r["command"] for r in requests] == ["identify"]
    assert os.fspath(watched) in result.err


# --- the system configuration's defaults ----------------------------------------------------------


def test_run_keeps_state_under_its_previous_default_and_warns(
        run: Run, tmp_path: Path, cloud: FakeCloud, watched: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = write_config(tmp_path / "etc.yaml", cloud.url, [(watched, "app-1")], Path("unused"),
                       logging={"format": "json", "level": "info"})
    etc.write_text("\n".join(line for line in etc.read_text().splitlines() if not line.startswith("state_dir:")))
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", etc)
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", tmp_path / "var-lib")
    monkeypatch.setattr(config_module, "SYSTEM_CONTROL_SOCKET", tmp_path / "run" / "control.sock")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    previous = tmp_path / "xdg" / "nextmv-watcher"
    (previous / "folders").mkdir(parents=True)   # a read-only folder's markers and intents live here
    held = DaemonLock.acquire(previous, config="/etc/other.yaml")   # so that `run` stops right after
    try:
        result = run("run", "--config", etc)
    finally:
        held.release()

    assert result.code == 2
    events = [json.loads(line) for line in result.err.splitlines()]
    [warning] = [e for e in events if e["event"] == "state_dir_previous_default"]
    assert (warning["level"], warning["state_dir"], warning["default"]) == \
        ("warning", str(previous), str(tmp_path / "var-lib"))
    [failed] = [e for e in events if e["event"] == "start_failed"]
    assert failed["state_dir"] == str(previous), "it kept the state where it was"
    assert not (tmp_path / "var-lib").exists(), "and moved nothing"
