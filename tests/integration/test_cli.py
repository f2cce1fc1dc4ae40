"""The command line, called in-process as `main(argv) -> exit code` (and twice as a real process).

Every call goes through `run()`, which also checks the promise that no API key ever reaches
stdout or stderr, whatever the command and its outcome.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import API_KEY, FAILED, TRACKED, WRONG_KEY, Run, marker, write_config, write_folder

from watcher import __version__
from watcher.cli import main
from watcher.fakecloud import FakeCloud
from watcher.runfolder.claims import Claims
from watcher.runfolder.markers import JOURNAL, Intent, Journal, StateStore

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

INPUT = b'{"stops": [1, 2, 3]}'
OUTPUT = b'{"solution": 7}'


@pytest.fixture
def config(tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], state_dir)


def api_requests(cloud: FakeCloud) -> list[str]:
    return [r.endpoint for r in cloud.requests() if r.endpoint != "control"]


def log_events(err: str) -> list[str]:
    """The event names of the JSON log lines on stderr; fails on a line that is not a JSON event."""
    return [json.loads(line)["event"] for line in err.splitlines() if line.strip()]


# --- version and configuration -----------------------------------------------------------------


def test_version_is_printed_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"nextmv-watcher {__version__}\n"


def test_python_dash_m_watcher_prints_the_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nextmv-watcher {__version__}\n"


def test_a_bad_config_exits_2_listing_every_problem(run: Run, tmp_path: Path, watched: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "bogus": 1,
        "workers": "many",
        "watch": [{"path": str(watched)}, {"path": str(tmp_path / "missing"), "application_id": "a"}],
    }))
    result = run("check", "--offline", "--config", path)
    assert result.code == 2
    assert result.out == ""
    assert str(path) in result.err
    for key in ("bogus", "workers", "watch[0].application_id"):
        assert f"  - {key}:" in result.err, f"{key} not reported in:\n{result.err}"
    assert "watch[1].path" not in result.err   # a missing watched path is no configuration error (issue 11)


def test_the_config_comes_from_the_environment_when_not_given(
        run: Run, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTMV_WATCHER_CONFIG", str(config))
    result = run("check", "--offline")
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == f"configuration {config}: ok (1 watched path(s))"


def test_a_missing_config_file_exits_2(run: Run, tmp_path: Path) -> None:
    result = run("scan", "--config", tmp_path / "nope.yaml")
    assert result.code == 2
    assert "cannot read the configuration file" in result.err


def test_a_missing_api_key_exits_2(run: Run, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTMV_API_KEY")
    result = run("check", "--config", config)   # --offline needs none (test_admin_cli.py)
    assert result.code == 2
    assert "no API key found" in result.err
    assert "$NEXTMV_API_KEY" in result.err


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["track"])   # FOLDER missing
    assert exc.value.code == 2
    assert "folder" in capsys.readouterr().err


# --- check ---------------------------------------------------------------------------------------


def test_check_offline_makes_no_request(run: Run, config: Path, cloud: FakeCloud) -> None:
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"configuration {config}: ok (1 watched path(s))",
                                       "API key: found in $NEXTMV_API_KEY, not checked (--offline)"]
    assert api_requests(cloud) == []


def test_check_against_the_emulator_is_ok(run: Run, config: Path, cloud: FakeCloud) -> None:
    result = run("check", "--config", config)
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"configuration {config}: ok (1 watched path(s))", "application app-1: ok"]
    assert api_requests(cloud) == ["get_application"]


def test_check_names_an_unknown_application_and_exits_1(run: Run, tmp_path: Path, state_dir: Path) -> None:
    good, bad = tmp_path / "good-runs", tmp_path / "bad-runs"
    good.mkdir()
    bad.mkdir()
    with FakeCloud(api_keys=[API_KEY], applications=["good"]) as fake:
        config = write_config(tmp_path / "c.yaml", fake.url, [(good, "good"), (bad, "nope")], state_dir)
        result = run("check", "--config", config)
    assert result.code == 1
    assert "application nope: NOT FOUND" in result.out
    assert "application good: ok" in result.out


def test_check_with_a_wrong_key_exits_1(run: Run, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTMV_API_KEY", WRONG_KEY)
    result = run("check", "--config", config)
    assert result.code == 1
    assert "API key: REJECTED (401)" in result.out


def test_check_reads_the_key_from_the_key_file(run: Run, tmp_path: Path, cloud: FakeCloud, watched: Path,
                                               state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTMV_API_KEY", WRONG_KEY)   # the file comes first
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], state_dir,
                          api={"key_file": str(key_file)})
    result = run("check", "--config", config)
    assert result.code == 0, result.out + result.err
    assert "application app-1: ok" in result.out


def test_check_exits_1_when_the_api_is_unreachable(run: Run, tmp_path: Path, watched: Path,
                                                   state_dir: Path) -> None:
    with FakeCloud(api_keys=[API_KEY]) as gone:
        url = gone.url                 # a port that refuses connections once the emulator stopped
    config = write_config(tmp_path / "c.yaml", url, [(watched, "app-1")], state_dir)
    result = run("check", "--config", config)
    assert result.code == 1
    assert f"API {url}: UNREACHABLE" in result.out


@pytest.mark.parametrize("off", ["protected_hardlinks", "protected_symlinks"])
def test_check_warns_when_a_link_protection_is_off(run: Run, config: Path, sysctl_fs: Path, off: str) -> None:
    (sysctl_fs / off).write_text("0\n")
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    warnings = [e for e in map(json.loads, result.err.splitlines()) if e["event"] == "link_protection_disabled"]
    assert [(w["sysctl"], w["level"]) for w in warnings] == [(f"fs.{off}", "warning")]
    assert f"sysctl -w fs.{off}=1" in warnings[0]["hint"]


def test_check_is_quiet_when_the_link_protections_are_on(run: Run, config: Path) -> None:
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert "link_protection_disabled" not in log_events(result.err)


def test_a_key_file_readable_by_others_draws_a_warning(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                       watched: Path, state_dir: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o644)
    config = write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], state_dir,
                          api={"key_file": str(key_file)})
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert "key_file_readable_by_others" in log_events(result.err)


# --- track ---------------------------------------------------------------------------------------


def test_track_prints_only_the_run_id_and_marks_the_folder(run: Run, config: Path, cloud: FakeCloud,
                                                           watched: Path) -> None:
    folder = write_folder(watched, "run-1", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    result = run("track", folder, "--config", config)
    assert result.code == 0, result.err
    runs = cloud.runs("app-1")
    assert len(runs) == 1
    assert result.out == f"{runs[0].run_id}\n"
    tracked = marker(folder)
    assert tracked is not None
    assert tracked["run_id"] == runs[0].run_id
    assert tracked["application_id"] == "app-1"
    assert runs[0].body["name"] == "run-1"
    upload = runs[0].artifact("input")
    assert upload is not None
    assert upload.data == INPUT
    assert not (folder / JOURNAL).exists()
    assert not (folder / ".nextmv-claim").exists()
    assert log_events(result.err), "expected JSON log events on stderr"


def test_track_as_a_real_process_prints_only_the_run_id(config: Path, cloud: FakeCloud, watched: Path) -> None:
    folder = write_folder(watched, "run-p", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    env = {**os.environ, "NEXTMV_API_KEY": API_KEY}
    env.pop("NEXTMV_WATCHER_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "watcher", "track", str(folder), "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    runs = cloud.runs("app-1")
    assert len(runs) == 1
    assert proc.stdout == f"{runs[0].run_id}\n"
    assert API_KEY not in proc.stdout + proc.stderr
    assert log_events(proc.stderr)


def test_track_refuses_an_already_tracked_folder_naming_its_run(run: Run, config: Path, cloud: FakeCloud,
                                                                watched: Path) -> None:
    folder = write_folder(watched, "run-1", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    first = run("track", folder, "--config", config)
    assert first.code == 0, first.err
    run_id = first.out.strip()
    before = len(cloud.requests())

    again = run("track", folder, "--config", config)
    assert again.code == 1
    assert again.out == ""
    assert f"already tracked as run {run_id}" in again.err
    assert len(cloud.requests()) == before
    assert len(cloud.runs()) == 1


def test_track_of_an_invalid_folder_exits_1_and_uploads_nothing(run: Run, config: Path, cloud: FakeCloud,
                                                                 watched: Path) -> None:
    folder = write_folder(watched, "ambiguous", {"input.json": INPUT, "input/a.csv": "a", "output.json": OUTPUT},
                          marker=None)
    result = run("track", folder, "--config", config)
    assert result.code == 1
    assert result.out == ""
    assert "ambiguous input" in result.err
    assert api_requests(cloud) == []
    assert marker(folder) is None
    assert not (folder / ".nextmv-claim").exists()


def test_track_of_a_folder_with_a_failed_marker_tracks_it_and_drops_the_marker(
        run: Run, config: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> None:
    folder = write_folder(watched, "run-f", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    StateStore(state_dir).mark_failed(folder, "boom", 3, 0.0, reason="exhausted")
    result = run("track", folder, "--config", config)
    assert result.code == 0, result.err
    assert marker(folder) is not None
    assert marker(folder, FAILED) is None
    assert len(cloud.runs()) == 1


def test_track_outside_a_watched_path_needs_an_application_id(run: Run, config: Path, cloud: FakeCloud,
                                                              tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = write_folder(elsewhere, "run-x", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)

    refused = run("track", folder, "--config", config)
    assert refused.code == 2
    assert "--application-id" in refused.err
    assert api_requests(cloud) == []

    result = run("track", folder, "--config", config, "--application-id", "other-app")
    assert result.code == 0, result.err
    runs = cloud.runs("other-app")
    assert [r.run_id for r in runs] == [result.out.strip()]
    tracked = marker(folder)
    assert tracked is not None
    assert tracked["application_id"] == "other-app"


def test_track_exits_1_when_the_api_rejects_the_key(run: Run, config: Path, cloud: FakeCloud, watched: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTMV_API_KEY", WRONG_KEY)
    folder = write_folder(watched, "run-1", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    result = run("track", folder, "--config", config)
    assert result.code == 1
    assert result.out == ""
    assert "could not track" in result.err
    assert cloud.runs() == []
    assert marker(folder) is None


def test_track_accepts_a_relative_folder_path(run: Run, config: Path, cloud: FakeCloud, watched: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_folder(watched, "run-rel", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    monkeypatch.chdir(watched)
    result = run("track", "run-rel", "--config", config)
    assert result.code == 0, result.err
    assert marker(folder)["run_id"] == result.out.strip()  # type: ignore[index]
    assert [r.application_id for r in cloud.runs()] == ["app-1"]


def test_track_refuses_a_folder_claimed_by_another_live_process(run: Run, config: Path, cloud: FakeCloud,
                                                                watched: Path) -> None:
    folder = write_folder(watched, "run-c", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    holder = Claims(clock=time.time, host=socket.gethostname(), pid=os.getppid())   # alive: our parent
    claim = holder.acquire(folder)
    assert claim is not None
    try:
        result = run("track", folder, "--config", config)
    finally:
        holder.release(claim)
    assert result.code == 1
    assert "being tracked by another process" in result.err
    assert str(os.getppid()) in result.err
    assert api_requests(cloud) == []
    assert marker(folder) is None


@pytest.mark.parametrize("where", ["watched", "elsewhere"])
def test_track_of_a_missing_folder_exits_2_saying_it_does_not_exist(run: Run, config: Path, cloud: FakeCloud,
                                                                    watched: Path, tmp_path: Path,
                                                                    where: str) -> None:
    missing = (watched if where == "watched" else tmp_path / "no" / "such") / "does-not-exist"
    result = run("track", missing, "--config", config)
    assert result.code == 2
    assert f"{missing} does not exist" in result.err
    assert api_requests(cloud) == []


def test_track_logs_its_folder_events_with_folder_and_application(run: Run, config: Path, cloud: FakeCloud,
                                                                  watched: Path) -> None:
    folder = write_folder(watched, "run-1", {"input.json": INPUT, "output.json": OUTPUT, "logs.txt": "x"},
                          marker=None)
    cloud.set_faults(put_slow_down_rate=1.0)   # every upload retried, on the caller's and the upload threads
    failed = run("track", folder, "--config", config)
    cloud.set_faults(put_slow_down_rate=0.0)
    tracked = run("track", folder, "--config", config)

    assert failed.code == 1 and tracked.code == 0, tracked.err
    events = [json.loads(line) for line in (failed.err + tracked.err).splitlines() if line.startswith("{")]
    folder_events = [e for e in events if e["event"] in ("folder_complete", "uploading", "upload_retrying",
                                                         "run_tracked")]
    assert {"uploading", "upload_retrying", "run_tracked"} <= {e["event"] for e in folder_events}
    assert len({e.get("artifact") for e in folder_events if e["event"] == "upload_retrying"}) == 3
    for e in folder_events:
        assert e.get("folder") == str(folder) and e.get("application_id") == "app-1", e


# --- track --repost --------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def maybe_posted(watched: Path, state_dir: Path) -> Path:
    """A folder whose earlier POST may have created a run (an open intent) that no look-up can find."""
    folder = write_folder(watched, "run-m", {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
    StateStore(state_dir).save_journal(folder, Journal(intents=[Intent("ef" * 16, time.time() - 3600)],
                                                       lookups_inconclusive=3, last_error="page limit"))
    return folder


def test_track_after_an_inconclusive_look_up_posts_nothing_and_names_repost(
        run: Run, config: Path, cloud: FakeCloud, maybe_posted: Path, state_dir: Path) -> None:
    cloud.fail_next("list_runs", 400)   # a page that cannot be read
    result = run("track", maybe_posted, "--config", config)
    assert result.code == 1
    assert "inconclusive" in result.err and "--repost" in result.err
    assert "create_run" not in api_requests(cloud)
    assert len(StateStore(state_dir).journal(maybe_posted).intents) == 1


def test_track_repost_refuses_without_a_terminal_and_without_yes(
        run: Run, config: Path, cloud: FakeCloud, maybe_posted: Path, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    result = run("track", maybe_posted, "--repost", "--config", config)
    assert result.code == 2
    assert "--yes" in result.err
    assert api_requests(cloud) == []
    assert len(StateStore(state_dir).journal(maybe_posted).intents) == 1


def test_track_repost_asks_saying_it_may_duplicate_and_n_posts_nothing(
        run: Run, config: Path, cloud: FakeCloud, maybe_posted: Path, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    result = run("track", maybe_posted, "--repost", "--config", config)
    assert result.code == 1
    assert "1 open intent(s)" in result.err and "duplicate run" in result.err and "[y/N]" in result.err
    assert api_requests(cloud) == []
    assert len(StateStore(state_dir).journal(maybe_posted).intents) == 1


@pytest.mark.parametrize("how", ["yes", "terminal"])
def test_track_repost_drops_the_intents_and_posts_once_without_a_look_up(
        run: Run, config: Path, cloud: FakeCloud, maybe_posted: Path, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    if how == "terminal":
        monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    result = run("track", maybe_posted, "--repost", *(["--yes"] if how == "yes" else []), "--config", config)
    assert result.code == 0, result.err
    [posted] = cloud.runs("app-1")
    assert result.out.splitlines()[-1] == posted.run_id
    assert "list_runs" not in api_requests(cloud)
    assert api_requests(cloud).count("create_run") == 1
    tracked = marker(maybe_posted)
    assert tracked is not None and tracked["run_id"] == posted.run_id
    assert "intents_dropped" in result.err
    assert not (maybe_posted / JOURNAL).exists()


def test_track_yes_without_repost_is_a_usage_error(run: Run, config: Path, cloud: FakeCloud,
                                                   maybe_posted: Path) -> None:
    result = run("track", maybe_posted, "--yes", "--config", config)
    assert result.code == 2
    assert api_requests(cloud) == []


# --- scan ----------------------------------------------------------------------------------------


@pytest.fixture
def five_folders(watched: Path, state_dir: Path) -> dict[str, Path]:
    """One folder in each state scan knows."""
    store = StateStore(state_dir)
    folders = {
        "tracked": write_folder(watched, "a-tracked", {"input.json": INPUT, "output.json": OUTPUT}),
        "failed": write_folder(watched, "b-failed", {"input.json": INPUT, "output.json": OUTPUT}),
        "pending": write_folder(watched, "c-pending", {"input.json": INPUT, "output.json": OUTPUT}),
        "incomplete": write_folder(watched, "d-incomplete", {"input.json": INPUT}, marker=None),
        "invalid": write_folder(watched, "e-invalid", {"output.json": OUTPUT}),
    }
    store.mark_tracked(folders["tracked"], "run-abc", "app-1", 1_700_000_000.0, name="a-tracked", token="t")
    store.mark_failed(folders["failed"], "rejected by the API: too big", 1, 1_700_000_000.0, reason="rejected")
    (watched / ".tmp-ignored").mkdir()
    return folders


def test_scan_table_lists_every_folder_with_its_reason_and_uploads_nothing(
        run: Run, config: Path, cloud: FakeCloud, five_folders: dict[str, Path]) -> None:
    result = run("scan", "--config", config)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["STATE", "FOLDER", "REASON"]
    assert lines[-1] == "1 tracked, 1 failed, 1 pending, 1 incomplete, 1 invalid"
    rows = {line.split()[1]: line for line in lines[1:-1]}
    assert set(rows) == {str(p) for p in five_folders.values()}
    for state, folder in five_folders.items():
        assert rows[str(folder)].split()[0] == state
    assert rows[str(five_folders["tracked"])].endswith("run run-abc")
    assert rows[str(five_folders["failed"])].endswith("rejected by the API: too big")
    assert rows[str(five_folders["incomplete"])].endswith("waiting for marker DONE")
    assert "no input" in rows[str(five_folders["invalid"])]
    assert api_requests(cloud) == []


def test_scan_json_lists_every_folder_with_state_and_reason(
        run: Run, config: Path, cloud: FakeCloud, five_folders: dict[str, Path]) -> None:
    result = run("scan", "--json", "--config", config)
    assert result.code == 0, result.err
    reports = {r["folder"]: r for r in json.loads(result.out)}
    assert set(reports) == {str(p) for p in five_folders.values()}
    for state, folder in five_folders.items():
        assert reports[str(folder)]["state"] == state
        assert reports[str(folder)]["application_id"] == "app-1"
    assert reports[str(five_folders["tracked"])]["run_id"] == "run-abc"
    assert reports[str(five_folders["failed"])]["reason"] == "rejected by the API: too big"
    assert reports[str(five_folders["pending"])]["reason"] == "complete; waiting to be tracked"
    assert reports[str(five_folders["incomplete"])]["reason"] == "waiting for marker DONE"
    assert reports[str(five_folders["invalid"])]["reason"].startswith("no input")
    assert api_requests(cloud) == []


def test_scan_reports_a_pending_intent_and_needs_no_api_key(
        run: Run, config: Path, watched: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTMV_API_KEY")
    folder = write_folder(watched, "posted", {"input.json": INPUT, "output.json": OUTPUT})
    StateStore(state_dir).save_journal(folder, Journal(intents=[Intent("ab" * 16, 1.0)]))
    result = run("scan", "--json", "--config", config)
    assert result.code == 0, result.err
    [report] = json.loads(result.out)
    assert report["state"] == "pending"
    assert "a POST may have created the run" in report["reason"]


def test_scan_reports_a_folder_waiting_after_an_inconclusive_look_up(
        run: Run, config: Path, watched: Path, state_dir: Path) -> None:
    folder = write_folder(watched, "unsure", {"input.json": INPUT, "output.json": OUTPUT})
    StateStore(state_dir).save_journal(folder, Journal(
        intents=[Intent("ab" * 16, 1.0)], lookups_inconclusive=2,
        last_error="run look-up in application 'app-1' inconclusive: the page limit was hit"))
    result = run("scan", "--json", "--config", config)
    assert result.code == 0, result.err
    [report] = json.loads(result.out)
    assert report["state"] == "pending"
    assert report["reason"].startswith("lookup_inconclusive: run look-up in application 'app-1' inconclusive")
    assert "2 look-up(s) in a row" in report["reason"] and "--repost" in report["reason"]


# --- retry ---------------------------------------------------------------------------------------


def test_retry_removes_the_failed_marker_and_the_attempt_count(run: Run, config: Path, watched: Path,
                                                               state_dir: Path) -> None:
    folder = write_folder(watched, "run-r", {"input.json": INPUT, "output.json": OUTPUT})
    store = StateStore(state_dir)
    store.mark_failed(folder, "gave up", 10, 1.0, reason="exhausted")
    store.save_journal(folder, Journal(attempts=10, next_attempt_at=2.0, last_error="HTTP 503"))

    result = run("retry", folder, "--config", config)
    assert result.code == 0, result.err
    assert str(folder) in result.out
    assert marker(folder, FAILED) is None
    assert store.journal(folder) == Journal()
    assert not (folder / JOURNAL).exists()

    again = run("retry", folder, "--config", config)
    assert again.code == 1
    assert again.out == ""
    assert "has no failed marker" in again.err


def test_retry_keeps_open_intents(run: Run, config: Path, watched: Path, state_dir: Path) -> None:
    folder = write_folder(watched, "run-i", {"input.json": INPUT, "output.json": OUTPUT})
    store = StateStore(state_dir)
    store.mark_failed(folder, "gave up", 10, 1.0, reason="exhausted")
    intent = Intent("cd" * 16, 5.0)
    store.save_journal(folder, Journal(attempts=10, next_attempt_at=2.0, last_error="x", intents=[intent]))
    result = run("retry", folder, "--config", config)
    assert result.code == 0, result.err
    assert store.journal(folder) == Journal(intents=[intent])


def test_retry_works_without_a_configuration_file(run: Run, watched: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("watcher.config.DEFAULT_CONFIG_PATH", tmp_path / "no-such-config.yaml")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    folder = write_folder(watched, "run-n", {"input.json": INPUT, "output.json": OUTPUT})
    StateStore(tmp_path / "xdg" / "nextmv-watcher").mark_failed(folder, "gave up", 10, 1.0, reason="exhausted")
    result = run("retry", folder)
    assert result.code == 0, result.err
    assert marker(folder, FAILED) is None


def test_retry_without_a_failed_marker_exits_1(run: Run, config: Path, watched: Path) -> None:
    folder = write_folder(watched, "run-ok", {"input.json": INPUT, "output.json": OUTPUT})
    result = run("retry", folder, "--config", config)
    assert result.code == 1
    assert "has no failed marker" in result.err
    assert marker(folder, TRACKED) is None
