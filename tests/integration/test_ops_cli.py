"""The operations commands, called in-process as `main(argv)`: sync, status, retry --all-failed, forget.

`sync` runs against the emulator on loopback. A running daemon is stood in for by a real
ControlServer on the configured socket with a stub handler (the daemon's own answer is tested
with the daemon); what the commands ask it is recorded.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import API_KEY, FAILED, TRACKED, Run, marker, wait_for, write_config, write_folder

from watcher.cli import main
from watcher.config import load_config
from watcher.daemon.control_socket import ControlServer
from watcher.daemon.identity import describe
from watcher.daemon.sync import run_sync
from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import JOURNAL, Intent, Journal, StateStore
from watcher.runfolder.prepare import SPOOL_PREFIX

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

INPUT = b'{"stops": [1, 2, 3]}'
OUTPUT = b'{"solution": 7}'
FILES: dict[str, str | bytes] = {"input.json": INPUT, "output.json": OUTPUT}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """A second watched path, of application app-2."""
    path = tmp_path / "runs-2"
    path.mkdir()
    return path


@pytest.fixture
def config(tmp_path: Path, cloud: FakeCloud, watched: Path, other: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1"), (other, "app-2")], state_dir,
                        logging={"format": "json", "level": "info"})


@dataclass
class StubDaemon:
    requests: list[dict[str, Any]]
    answer: dict[str, Any]


@pytest.fixture
def daemon(config: Path) -> Iterator[StubDaemon]:
    """A control socket where the configuration says the daemon's is; answers `status` with `answer`."""
    stub = StubDaemon([], {"ok": True, "status": {}})
    threads_before = set(threading.enumerate())

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        stub.requests.append(request)
        return stub.answer if request["command"] == "status" else {"ok": True}

    path = load_config(config).control_socket
    assert path is not None
    loaded = load_config(config)
    server = ControlServer(path, handle, identify=lambda: describe(loaded, 4242))   # the daemon of `config`
    server.start()
    yield stub
    server.stop()
    wait_for(lambda: not [t for t in threading.enumerate() if t not in threads_before and t.is_alive()], 5,
             "the control thread to end")


def commands(stub: StubDaemon) -> list[str]:
    """What the commands told the daemon (see `told`)."""
    return [r["command"] for r in told(stub)]


def told(stub: StubDaemon) -> list[dict[str, Any]]:
    """The requests that told the daemon something ("identify" only asks who it is)."""
    return [r for r in stub.requests if r["command"] != "identify"]


# --- sync ----------------------------------------------------------------------------------------


def test_sync_tracks_a_backlog_once_and_exits_0(run: Run, config: Path, cloud: FakeCloud, watched: Path,
                                                 other: Path) -> None:
    folders = [write_folder(watched, f"run-{i:02d}", FILES) for i in range(20)]
    folders += [write_folder(other, f"other-{i}", FILES) for i in range(5)]
    write_folder(watched, "still-writing", {"input.json": INPUT}, marker=None)

    result = run("sync", "--config", config)
    assert result.code == 0, result.err
    runs = {r.body["name"]: r for r in cloud.runs()}
    assert sorted(runs) == sorted(f.name for f in folders)   # each folder once, nothing else
    for folder in folders:
        tracked = marker(folder)
        assert tracked is not None
        assert tracked["run_id"] == runs[folder.name].run_id
    assert {r.body["name"] for r in cloud.runs("app-2")} == {f"other-{i}" for i in range(5)}
    assert marker(watched / "still-writing") is None
    lines = dict(re.split(r"\s{2,}", line.strip()) for line in result.out.splitlines() if line.strip())
    assert lines["tracked"] == "25"
    assert lines["failed"] == "0"
    assert lines["skipped incomplete"] == "1"
    logged = [json.loads(line) for line in result.err.splitlines()]
    events = [e["event"] for e in logged]
    assert events.count("run_tracked") == 25
    assert events.index("sync_started") < events.index("sync_finished")
    assert not [e for e in events if e.startswith("daemon_")]   # a sync is not a daemon
    # Every folder event names its folder and application.
    for e in logged:
        if e["event"] in ("uploading", "run_tracked"):
            assert e["folder"] in {str(f) for f in folders} and e["application_id"] in ("app-1", "app-2"), e

    again = run("sync", "--config", config)
    assert again.code == 0, again.err
    assert len(cloud.runs()) == 25
    again_lines = dict(re.split(r"\s{2,}", line.strip()) for line in again.out.splitlines() if line.strip())
    assert again_lines["tracked"] == "0"
    assert again_lines["already tracked"] == "25"


def test_sync_with_an_invalid_folder_exits_1_and_lists_it(run: Run, config: Path, cloud: FakeCloud,
                                                           watched: Path) -> None:
    good = [write_folder(watched, f"good-{i}", FILES) for i in range(3)]
    bad = write_folder(watched, "bad", {"output.json": OUTPUT})
    result = run("sync", "--config", config)
    assert result.code == 1
    assert all(marker(f) is not None for f in good)
    failed = marker(bad, FAILED)
    assert failed is not None
    assert {r.body["name"] for r in cloud.runs()} == {f.name for f in good}
    out = result.out.splitlines()
    assert "failed folders:" in out
    [row] = [line for line in out if str(bad) in line]
    assert row.split()[1] == "invalid:"
    assert failed["error"] in row


def test_sync_counts_folders_that_failed_before_apart_and_exits_0(run: Run, config: Path, watched: Path,
                                                                  state_dir: Path) -> None:
    old = write_folder(watched, "failed-last-week", FILES)
    StateStore(state_dir).mark_failed(old, "rejected by the API: too big", 1, 1_700_000_000.0, reason="rejected")
    write_folder(watched, "new", FILES)
    result = run("sync", "--config", config)
    assert result.code == 0, result.err
    assert "already failed             1" in result.out
    assert str(old) not in result.out


def test_sync_gives_up_at_once_when_the_key_is_rejected(run: Run, config: Path, cloud: FakeCloud,
                                                        watched: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTMV_API_KEY", "not-the-key-0123")
    folder = write_folder(watched, "run-1", FILES)
    result = run("sync", "--config", config)
    assert result.code == 1
    assert "sync stopped early: the API rejected the key" in result.err
    assert "not-the-key-0123" not in result.out + result.err
    assert marker(folder) is None and marker(folder, FAILED) is None   # left for a later sync, not failed
    assert re.search(rf"{re.escape(str(folder))}\s", result.out)       # listed as not tracked yet
    assert cloud.runs() == []


def test_sync_gives_up_when_only_folders_after_an_inconclusive_look_up_are_left(
        run: Run, config: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> None:
    good = [write_folder(watched, f"good-{i}", FILES) for i in range(2)]
    unsure = write_folder(watched, "unsure", FILES)
    StateStore(state_dir).save_journal(unsure, Journal(intents=[Intent("ab" * 16, time.time() - 3600)]))
    cloud.fail_next("list_runs", 400, count=1000)   # no page of the run list can be read
    result = run("sync", "--config", config)
    assert result.code == 1
    assert "sync stopped early: 1 folder(s) wait after an inconclusive run look-up" in result.err
    assert all(marker(f) is not None for f in good)
    assert {r.body["name"] for r in cloud.runs()} == {f.name for f in good}   # never posted again
    assert marker(unsure) is None and marker(unsure, FAILED) is None
    [row] = [line for line in result.out.splitlines() if str(unsure) in line]
    assert "lookup_inconclusive" in row


def test_sync_on_a_terminal_shows_a_progress_bar_and_a_table(config: Path, cloud: FakeCloud, watched: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        write_folder(watched, f"run-{i}", FILES)
    bad = write_folder(watched, "bad", {"output.json": OUTPUT})
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "400")   # a wide terminal: the table folds nothing, whatever the tmp path's length
    code = main(["sync", "--config", str(config)])
    monkeypatch.undo()
    assert code == 1
    screen = ANSI.sub("", err.getvalue())
    assert "tracking" in screen and "4/4" in screen          # the bar, complete
    assert "folder_failed" in screen                         # warnings and errors are logged above it ...
    assert "run_tracked" not in screen                       # ... info events are not
    table = ANSI.sub("", out.getvalue())
    assert "sync summary" in table and "failed folders" in table
    assert re.search(r"│ tracked\s+│\s+3 │", table)
    assert bad.name in table and "no input" in table
    assert len(cloud.runs()) == 3


def test_run_sync_reports_a_service_that_cannot_start(tmp_path: Path, config: Path, watched: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool").write_text("a file where the spool directory goes")
    out, err = io.StringIO(), io.StringIO()
    assert run_sync(load_config(config), API_KEY, out=out, err=err) == 1
    assert "cannot start" in err.getvalue()


# --- status --------------------------------------------------------------------------------------


def test_status_without_a_daemon_falls_back_to_a_scan(run: Run, config: Path, watched: Path,
                                                      state_dir: Path, cloud: FakeCloud) -> None:
    store = StateStore(state_dir)
    done = write_folder(watched, "a-done", FILES)
    store.mark_tracked(done, "run-abc", "app-1", 1_700_000_000.0)
    bad = write_folder(watched, "b-bad", FILES)
    store.mark_failed(bad, "invalid folder: no input", 1, 1_700_000_000.0, reason="invalid")
    write_folder(watched, "c-pending", FILES)
    write_folder(watched, "d-incomplete", {"input.json": INPUT}, marker=None)

    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert "no daemon answers on" in result.err
    assert "showing a scan" in result.err
    lines = result.out.splitlines()
    assert lines[0] == "daemon: not running"
    assert lines[1] == "folders: 1 tracked, 1 failed, 1 pending, 1 incomplete, 0 invalid"
    assert lines[2].split() == ["2023-11-14T22:13:20.000Z", str(bad), "invalid:", "invalid", "folder:", "no",
                                "input"]

    as_json = run("status", "--json", "--config", config)
    assert as_json.code == 0
    data = json.loads(as_json.out)
    assert data["state"] == "not running"
    assert data["counts"] == {"tracked": 1, "failed": 1, "pending": 1, "incomplete": 1, "invalid": 0,
                              "newer": 0}
    assert data["failed"] == [{"folder": str(bad), "application_id": "app-1", "reason": "invalid",
                               "error": "invalid folder: no input", "at": "2023-11-14T22:13:20.000Z"}]
    assert [r for r in cloud.requests() if r.endpoint != "control"] == []


STATUS: dict[str, Any] = {
    "state": "running", "pid": 4242, "uptime_seconds": 3723.5, "queue_depth": 7,
    "folders": {"queued": 7, "in_flight": 2, "retry_wait": 3, "parked": 4},
    "in_flight": ["/runs/a", "/runs/b"],
    "paused": {"app-9": {"reason": "application_not_found", "message": "404 app-9", "since": 1_700_000_000.0}},
    "counters": {"tracked": 120, "failed": 2, "retried": 5},
    "recent_failures": [{"folder": "/runs/x", "reason": "rejected", "error": "413 too large",
                         "at": 1_700_000_100.0}],
    "observer_alive": True, "workers_alive": 8, "oldest_pending_age_seconds": 65.0, "incomplete_too_long": 1,
    "watched": ["/runs"],
}


def test_status_asks_the_running_daemon(run: Run, config: Path, daemon: StubDaemon) -> None:
    daemon.answer = {"ok": True, "status": STATUS}
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert commands(daemon) == ["status"]
    assert result.out.splitlines() == [
        "daemon: running (pid 4242), up 1h 02m 03s",
        "watched: /runs",
        "folders: 7 queued, 2 in flight, 3 waiting to retry, 4 parked; oldest pending 1m 05s",
        "  in flight: /runs/a",
        "  in flight: /runs/b",
        "paused: application app-9 since 2023-11-14T22:13:20.000Z (application_not_found): 404 app-9",
        "counters: 120 tracked, 2 failed, 5 retried",
        "health: observer alive, 8 worker(s) alive, 1 folder(s) incomplete for too long",
        "recent failures: 1",
        "  2023-11-14T22:15:00.000Z  /runs/x  rejected: 413 too large",
    ]
    assert "no daemon" not in result.err


def test_status_lists_the_folders_waiting_after_an_inconclusive_look_up(run: Run, config: Path,
                                                                         daemon: StubDaemon) -> None:
    daemon.answer = {"ok": True, "status": {**STATUS, "lookup_inconclusive": {"count": 2, "folders": ["/runs/m"]}}}
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    at = lines.index("  in flight: /runs/b") + 1
    assert lines[at].startswith("  2 waiting after an inconclusive run look-up (never posted again; ")
    assert "--repost" in lines[at]
    assert lines[at + 1:at + 3] == ["    /runs/m", "    ... (`nextmv-watcher scan` lists them all)"]


def test_status_without_a_daemon_lists_folders_after_an_inconclusive_look_up(
        run: Run, config: Path, watched: Path, state_dir: Path) -> None:
    folder = write_folder(watched, "unsure", FILES)
    StateStore(state_dir).save_journal(folder, Journal(intents=[Intent("ab" * 16, 1.0)], lookups_inconclusive=1,
                                                       last_error="page limit"))
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert result.out.splitlines()[2:] == [
        "  1 pending after an inconclusive run look-up (`nextmv-watcher scan` says why):", f"    {folder}"]
    as_json = json.loads(run("status", "--json", "--config", config).out)
    assert as_json["lookup_inconclusive"] == [str(folder)]


def test_status_shows_a_wedged_observer(run: Run, config: Path, daemon: StubDaemon) -> None:
    daemon.answer = {"ok": True, "status": {**STATUS, "observer_wedged": ["/runs"]}}
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert "health: observer WEDGED (delivers no events) for /runs, 8 worker(s) alive, " \
           "1 folder(s) incomplete for too long" in result.out.splitlines()


def test_status_json_prints_the_daemons_status(run: Run, config: Path, daemon: StubDaemon) -> None:
    daemon.answer = {"ok": True, "status": STATUS}
    result = run("status", "--json", "--config", config)
    assert result.code == 0, result.err
    assert json.loads(result.out) == STATUS


def test_status_shows_an_idle_daemon_with_few_keys(run: Run, config: Path, daemon: StubDaemon) -> None:
    daemon.answer = {"ok": True, "status": {"state": "running", "pid": 1, "uptime_seconds": 5, "queue_depth": 0,
                                            "in_flight": [], "paused": {}}}
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert "paused: no" in result.out.splitlines()
    assert "recent failures: none" in result.out.splitlines()


def test_status_exits_1_when_the_daemon_answers_an_error(run: Run, config: Path, daemon: StubDaemon) -> None:
    daemon.answer = {"ok": False, "error": "unknown command 'status'"}
    result = run("status", "--config", config)
    assert result.code == 1
    assert "unknown command 'status'" in result.err
    assert result.out == ""


# --- retry --all-failed --------------------------------------------------------------------------


@pytest.fixture
def failed_folders(watched: Path, other: Path, state_dir: Path) -> dict[str, Path]:
    store = StateStore(state_dir)
    folders = {
        "a1": write_folder(watched, "a1", FILES), "a2": write_folder(watched, "a2", FILES),
        "b1": write_folder(other, "b1", FILES), "ok": write_folder(watched, "ok", FILES),
    }
    for name in ("a1", "a2", "b1"):
        store.mark_failed(folders[name], "gave up", 10, 1.0, reason="exhausted")
        store.save_journal(folders[name], Journal(attempts=10, next_attempt_at=2.0, last_error="HTTP 503"))
    store.save_journal(folders["a2"], Journal(attempts=10, last_error="x", intents=[Intent("ab" * 16, 5.0)]))
    store.mark_tracked(folders["ok"], "run-ok", "app-1", 1.0)
    return folders


def test_retry_all_failed_clears_every_failed_folder_and_pokes_the_daemon(
        run: Run, config: Path, failed_folders: dict[str, Path], state_dir: Path, daemon: StubDaemon) -> None:
    result = run("retry", "--all-failed", "--config", config)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [str(failed_folders[n]) for n in ("a1", "a2", "b1")]
    store = StateStore(state_dir)
    for name in ("a1", "a2", "b1"):
        assert marker(failed_folders[name], FAILED) is None
    assert not (failed_folders["a1"] / JOURNAL).exists()
    assert store.journal(failed_folders["a2"]) == Journal(intents=[Intent("ab" * 16, 5.0)])  # intents kept
    assert marker(failed_folders["ok"], TRACKED) is not None
    assert told(daemon) == [{"command": "retried", "folders": [str(failed_folders[n]) for n in ("a1", "a2", "b1")]}]


def test_retry_all_failed_of_one_application(run: Run, config: Path, failed_folders: dict[str, Path]) -> None:
    result = run("retry", "--all-failed", "--application", "app-2", "--config", config)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [str(failed_folders["b1"])]
    assert marker(failed_folders["b1"], FAILED) is None
    assert marker(failed_folders["a1"], FAILED) is not None
    assert marker(failed_folders["a2"], FAILED) is not None


def test_retry_all_failed_with_nothing_failed_says_so(run: Run, config: Path, watched: Path) -> None:
    write_folder(watched, "fine", FILES)
    result = run("retry", "--all-failed", "--config", config)
    assert result.code == 0
    assert result.out == ""
    assert "0 failed folder(s)" in result.err


def test_retry_of_an_unknown_application_is_a_usage_error(run: Run, config: Path,
                                                          failed_folders: dict[str, Path]) -> None:
    result = run("retry", "--all-failed", "--application", "app-404", "--config", config)
    assert result.code == 2
    assert marker(failed_folders["a1"], FAILED) is not None


@pytest.mark.parametrize("argv", [["retry"], ["retry", "some/folder", "--all-failed"],
                                  ["retry", "some/folder", "--application", "app-1"]])
def test_retry_needs_a_folder_or_all_failed(run: Run, argv: list[str]) -> None:
    result = run(*argv)
    assert result.code == 2
    assert "retry:" in result.err


def test_retry_of_one_folder_pokes_the_daemon_too(run: Run, config: Path, failed_folders: dict[str, Path],
                                                  daemon: StubDaemon) -> None:
    result = run("retry", failed_folders["a1"], "--config", config)
    assert result.code == 0, result.err
    assert marker(failed_folders["a1"], FAILED) is None
    assert marker(failed_folders["a2"], FAILED) is not None
    assert told(daemon) == [{"command": "retried", "folders": [str(failed_folders["a1"])]}], \
        "the daemon is told which folder was reset (it counts it as retried, reason manual)"


# --- forget --------------------------------------------------------------------------------------


@pytest.fixture
def tracked_folder(watched: Path, state_dir: Path) -> Path:
    folder = write_folder(watched, "run-t", FILES)
    StateStore(state_dir).mark_tracked(folder, "run-123", "app-1", 1.0)
    return folder


def tty_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(text))


def test_forget_with_yes_removes_the_tracked_marker_and_pokes_the_daemon(
        run: Run, config: Path, tracked_folder: Path, daemon: StubDaemon) -> None:
    result = run("forget", tracked_folder, "--yes", "--config", config)
    assert result.code == 0, result.err
    assert marker(tracked_folder, TRACKED) is None
    assert str(tracked_folder) in result.out and "run-123" in result.out
    assert commands(daemon) == ["rescan"]


def test_forget_asks_and_n_keeps_the_marker(run: Run, config: Path, tracked_folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    tty_stdin(monkeypatch, "n\n")
    result = run("forget", tracked_folder, "--config", config)
    assert result.code == 1
    assert f"Forget run run-123 of {tracked_folder} and track it again? [y/N]" in result.err
    assert marker(tracked_folder, TRACKED) is not None
    assert result.out == ""


def test_forget_asks_and_y_forgets(run: Run, config: Path, tracked_folder: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tty_stdin(monkeypatch, "y\n")
    result = run("forget", tracked_folder, "--config", config)
    assert result.code == 0, result.err
    assert marker(tracked_folder, TRACKED) is None


def test_forget_without_a_terminal_and_without_yes_refuses(run: Run, config: Path, tracked_folder: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    result = run("forget", tracked_folder, "--config", config)
    assert result.code == 2
    assert "--yes" in result.err
    assert marker(tracked_folder, TRACKED) is not None


def test_forget_of_a_folder_without_a_tracked_marker_exits_1(run: Run, config: Path, watched: Path) -> None:
    folder = write_folder(watched, "never-tracked", FILES)
    result = run("forget", folder, "--yes", "--config", config)
    assert result.code == 1
    assert "has no tracked marker" in result.err


def test_sync_gives_up_when_the_api_stays_unreachable(tmp_path: Path, watched: Path, state_dir: Path) -> None:
    path = write_config(tmp_path / "down.yaml", "http://127.0.0.1:9", [(watched, "app-1")], state_dir)
    folder = write_folder(watched, "run-1", FILES)
    out, err = io.StringIO(), io.StringIO()
    assert run_sync(load_config(path), API_KEY, out=out, err=err, timeout=0.5) == 1
    assert "sync stopped early: no progress for" in err.getvalue()
    assert "uploadurl: no response" in err.getvalue() or "has been unreachable" in err.getvalue()
    assert marker(folder) is None and marker(folder, FAILED) is None
    assert "not tracked yet" in out.getvalue()


def test_sync_gives_up_naming_refused_uploads(tmp_path: Path, watched: Path, state_dir: Path) -> None:
    with FakeCloud(api_keys=[API_KEY]) as cloud:
        cloud.set_faults(put_signature_mismatch_rate=1.0)
        path = write_config(tmp_path / "proxy.yaml", cloud.url, [(watched, "app-1")], state_dir)
        folders = [write_folder(watched, f"run-{i}", FILES) for i in range(6)]
        out, err = io.StringIO(), io.StringIO()
        assert run_sync(load_config(path), API_KEY, out=out, err=err, timeout=2.0) == 1
    assert "sync stopped early: no progress for" in err.getvalue()
    assert "the API had every upload refused for" in err.getvalue()
    assert "SignatureDoesNotMatch" in err.getvalue()
    assert all(marker(f) is None and marker(f, FAILED) is None for f in folders)


def test_sync_waits_for_folders_claimed_by_another_process_then_names_them(
        tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> None:
    path = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], state_dir,
                        logging={"format": "json", "level": "info"})
    free = write_folder(watched, "free", FILES)
    held = write_folder(watched, "held", FILES)
    # Another live process on this host (this test's) holds a fresh claim on one folder.
    (held / ".nextmv-claim").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                    "id": "someone-else", "lease_until": time.time() + 600}))
    out, err = io.StringIO(), io.StringIO()

    assert run_sync(load_config(path), API_KEY, out=out, err=err, timeout=1.0) == 1

    assert marker(free) is not None
    assert marker(held) is None and marker(held, FAILED) is None
    assert "waited for: 1 folder(s) claimed by another process" in err.getvalue()
    assert str(held) in out.getvalue()   # listed as not tracked yet


def test_sync_that_keeps_making_progress_is_not_cut_off(tmp_path: Path, cloud: FakeCloud, watched: Path,
                                                        state_dir: Path) -> None:
    """A backfill longer than the timeout goes on as long as folders keep being tracked."""
    cloud.set_faults(latency_seconds=0.1)   # each folder takes at least 5 calls x 0.1 s with one worker
    path = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], state_dir, workers=1,
                        logging={"format": "json", "level": "info"})
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(8)]
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()

    code = run_sync(load_config(path), API_KEY, out=out, err=err, timeout=2.0)

    assert code == 0, err.getvalue()
    assert time.monotonic() - began > 2.0   # the whole sync outlasted its timeout
    assert all(marker(f) is not None for f in folders)
    assert "stopped early" not in err.getvalue()


def test_sync_says_which_watched_path_it_skips_because_it_is_missing(
        tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> None:
    gone = tmp_path / "not-there"
    path = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1"), (gone, "app-2")], state_dir,
                        logging={"format": "json", "level": "info"})
    folder = write_folder(watched, "run-1", FILES)
    out, err = io.StringIO(), io.StringIO()

    assert run_sync(load_config(path), API_KEY, out=out, err=err) == 0

    assert marker(folder) is not None
    assert f"watched path {gone} does not exist: skipped" in err.getvalue()


def test_sync_keeps_the_spool_files_of_a_daemon_beside_it(run: Run, config: Path, watched: Path,
                                                          state_dir: Path) -> None:
    """Only the state directory's daemon cleans the spool at start: a sync beside it must not remove a
    file that daemon is uploading (it did)."""
    spool = state_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    uploading = spool / f"{SPOOL_PREFIX}being-uploaded"
    uploading.write_bytes(b"half an archive")
    folder = write_folder(watched, "run-1", FILES)

    result = run("sync", "--config", config)

    assert result.code == 0, result.err
    assert marker(folder) is not None
    assert uploading.read_bytes() == b"half an archive"
