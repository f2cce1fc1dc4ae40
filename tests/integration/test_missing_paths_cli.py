"""Commands with a watched path that is missing (issue 11, item 2), called in-process as `main(argv)`.

`check` warns and exits 0 while another watched path is a directory, 2 when none is (and `run` refuses
to start then); `scan` and `status` work and say which path is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Run, write_config, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

FILES = {"input.json": "{}", "output.json": "{}"}


@pytest.fixture
def gone(tmp_path: Path) -> Path:
    return tmp_path / "gone"


@pytest.fixture
def config(tmp_path: Path, cloud: FakeCloud, watched: Path, gone: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1"), (gone, "app-2")], state_dir)


def test_check_warns_about_a_missing_watched_path_and_exits_0(run: Run, config: Path, gone: Path) -> None:
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert result.out.startswith(f"configuration {config}: ok (2 watched path(s))\n")
    assert f"warning: watch[1].path {gone} does not exist: nothing there is tracked" in result.err
    assert "not writable" not in result.err   # missing, not merely read-only


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_exit_2_when_no_watched_path_is_a_directory(
        run: Run, tmp_path: Path, cloud: FakeCloud, watched: Path, gone: Path, state_dir: Path,
        command: str) -> None:
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path / "none.yaml", cloud.url, [(gone, "app-1"), (tmp_path / "afile", "app-2")],
                          state_dir)
    result = run(command, *(["--offline"] if command == "check" else []), "--config", config)
    assert result.code == 2
    assert f"no watched path is a directory: {gone} does not exist; {tmp_path / 'afile'} is not a directory" \
        in result.err


def test_scan_lists_the_other_paths_and_warns_about_the_missing_one(
        run: Run, config: Path, watched: Path, gone: Path) -> None:
    write_folder(watched, "run-1", FILES)
    result = run("scan", "--json", "--config", config)
    assert result.code == 0, result.err
    assert [r["folder"] for r in json.loads(result.out)] == [str(watched / "run-1")]
    assert f"warning: watched path {gone} is missing (does not exist)" in result.err


def test_scan_does_not_follow_a_symlink_in_place_of_a_watched_path(
        run: Run, config: Path, tmp_path: Path, gone: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_folder(elsewhere, "not-ours", FILES)
    gone.symlink_to(elsewhere, target_is_directory=True)
    result = run("scan", "--json", "--config", config)
    assert result.code == 0, result.err
    assert json.loads(result.out) == []
    assert f"warning: watched path {gone} is missing (is a symlink (not followed))" in result.err


def test_status_without_a_daemon_names_the_missing_path(run: Run, config: Path, gone: Path) -> None:
    result = run("status", "--config", config)
    assert result.code == 0, result.err
    assert f"watched path MISSING: {gone} does not exist" in result.out
    result = run("status", "--json", "--config", config)
    assert json.loads(result.out)["watched_missing"] == {str(gone): "does not exist"}
