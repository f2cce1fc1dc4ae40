"""Settle mode at the command line (issue 11, finding 1): `check` warns about it, `scan` says why a
folder with a half-written JSON file waits, and `track FOLDER` still tracks it by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Run, marker, write_config, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

HALF = b'{"solutions": ['


@pytest.fixture
def settle_config(tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "settle.yaml", cloud.url, [(watched, "app-1")], state_dir,
                        completion={"marker": None, "settle_seconds": 0})


def test_check_warns_about_settle_mode_and_says_why_the_marker_is_safer(run: Run, settle_config: Path,
                                                                        watched: Path) -> None:
    result = run("check", "--offline", "--config", settle_config)
    assert result.code == 0, result.err
    assert "ok" in result.out
    warning = next(line for line in result.err.splitlines() if "settle mode" in line)
    assert str(watched) in warning
    assert "completion.marker: DONE" in warning
    assert "partial file" in warning


def test_check_says_nothing_about_settle_mode_with_a_marker(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                            watched: Path, state_dir: Path) -> None:
    config = write_config(tmp_path / "marker.yaml", cloud.url, [(watched, "app-1")], state_dir)
    result = run("check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert "settle mode" not in result.err


def test_scan_shows_a_half_written_json_file_as_incomplete(run: Run, settle_config: Path, watched: Path,
                                                           cloud: FakeCloud) -> None:
    half = write_folder(watched, "s1", {"input.json": '{"in": 1}', "output.json": HALF}, marker=None)
    whole = write_folder(watched, "s2", {"input.json": '{"in": 1}', "output.json": HALF + b"1]}"}, marker=None)
    result = run("scan", "--json", "--config", settle_config)
    assert result.code == 0, result.err
    reports = {r["folder"]: r for r in json.loads(result.out)}
    assert (reports[str(half)]["state"], reports[str(half)]["reason"]) == \
        ("incomplete", "output.json is not complete JSON")
    assert reports[str(whole)]["state"] == "pending"
    table = run("scan", "--config", settle_config).out
    row = next(line for line in table.splitlines() if str(half) in line)
    assert row.split()[0] == "incomplete"
    assert row.endswith("output.json is not complete JSON")
    assert cloud.runs() == []


def test_track_tracks_a_half_written_json_file_by_hand(run: Run, settle_config: Path, watched: Path,
                                                       cloud: FakeCloud) -> None:
    folder = write_folder(watched, "by-hand", {"input.json": '{"in": 1}', "output.json": HALF}, marker=None)
    result = run("track", folder, "--config", settle_config)
    assert result.code == 0, result.err
    assert marker(folder) is not None
    upload = cloud.runs("app-1")[0].artifact("output_upload_id")
    assert upload is not None
    assert upload.data == HALF
