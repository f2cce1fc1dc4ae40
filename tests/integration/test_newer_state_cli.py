"""The admin commands leave a folder written by a newer nextmv-watcher alone: `track`, `retry` and
`forget` refuse it (exit 1) and change nothing; `scan` and `status` (without a daemon) show it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FAILED, TRACKED, Run, write_config, write_folder

from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import JOURNAL

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")

FILES = {"input.json": "{}", "output.json": "{}"}
NEWER = "written by a newer nextmv-watcher (schema 3)"


@pytest.fixture
def config(tmp_path: Path, cloud: FakeCloud, watched: Path, state_dir: Path) -> Path:
    return write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], state_dir,
                        control_socket=str(tmp_path / "none.sock"))


def newer_folder(watched: Path, name: str, state_file: str) -> Path:
    folder = write_folder(watched, name, FILES)
    (folder / state_file).write_text(json.dumps({"schema": 3, "run_id": "r", "error": "e", "attempts": 1}))
    return folder


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize(("command", "state_file"), [
    (["track"], JOURNAL), (["track"], FAILED), (["track", "--repost", "--yes"], JOURNAL),
    (["retry"], FAILED), (["forget", "--yes"], TRACKED),
])
def test_admin_commands_refuse_a_newer_version_s_folder(run: Run, config: Path, watched: Path, cloud: FakeCloud,
                                                        command: list[str], state_file: str) -> None:
    folder = newer_folder(watched, "from-the-future", state_file)
    before = files(folder)
    result = run(command[0], folder, *command[1:], "--config", config)
    assert result.code == 1
    assert f"{folder}: {state_file} {NEWER}; left alone" in result.err
    assert files(folder) == before
    assert cloud.runs() == []


def test_scan_and_status_show_a_newer_version_s_folder(run: Run, config: Path, watched: Path) -> None:
    folder = newer_folder(watched, "from-the-future", JOURNAL)
    scan = run("scan", "--config", config)
    assert scan.code == 0
    assert scan.out.splitlines()[1].split(maxsplit=2) == ["newer", str(folder),
                                                          f"{JOURNAL} {NEWER}; left alone by this version"]
    status = run("status", "--config", config)
    assert "folders: 0 tracked, 0 failed, 0 pending, 0 incomplete, 0 invalid, 1 newer" in status.out
    assert f"    {folder}: {JOURNAL} {NEWER}; left alone by this version" in status.out
    as_json = json.loads(run("status", "--json", "--config", config).out)
    assert as_json["newer"] == {"count": 1, "folders": [
        {"folder": str(folder), "problem": f"{JOURNAL} {NEWER}; left alone by this version"}]}
