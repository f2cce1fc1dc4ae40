"""Hosts of different versions on one volume: a folder whose marker or journal was written by a newer
nextmv-watcher (a newer `schema`) is left alone by the real daemon: never tracked, claimed or changed,
shown by `scan` and `status`, logged once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import marker, wait_for, write_folder

from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import JOURNAL, TRACKED

pytestmark = pytest.mark.e2e

FILES = {"input.json": '{"stops": [1, 2]}', "output.json": '{"solution": 3}'}
NEWER = "written by a newer nextmv-watcher (schema 99)"


def snapshot(folder: Path) -> tuple[int, dict[str, bytes]]:
    """The folder's directory mtime (a claim made and removed changes it) and every file's bytes."""
    return folder.stat().st_mtime_ns, {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def newer_events(daemon_events: list[dict[str, object]], folder: Path) -> list[dict[str, object]]:
    return [e for e in daemon_events if e.get("event") == "state_newer" and e.get("folder") == str(folder)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_folders_written_by_a_newer_version_are_never_tracked_claimed_or_changed(
        cloud: FakeCloud, watched: Path, daemon_factory, tmp_path: Path) -> None:
    # Present at start-up: a complete folder a newer daemon was tracking (its journal, with fields this
    # version does not know inside an intent).
    journal_99 = write_folder(watched, "journal-99", FILES)
    (journal_99 / JOURNAL).write_text(json.dumps(
        {"schema": 99, "attempts": 1, "intents": [{"token": "f" * 32, "created_at": 1.0, "posted_to": "eu"}]}))
    before_journal = snapshot(journal_99)
    daemon = daemon_factory([(watched, "app-1")], control_socket=str(tmp_path / "control.sock")).start()
    daemon.wait_ready()
    try:
        # Arriving while it runs: a complete folder a newer daemon tracked.
        staged = write_folder(watched, "tracked-99", {**FILES, TRACKED: json.dumps(
            {"schema": 99, "run_id": "run-from-a-newer-version", "tracked_at": "2030-01-01T00:00:00.000Z"})},
            via_dot=True)   # the marker is there before the folder appears
        before_tracked = snapshot(staged)
        write_folder(watched, "today", FILES)
        wait_for(lambda: marker(watched / "today"), 20, "the ordinary folder tracked")
        wait_for(lambda: newer_events(daemon.events(), journal_99) and newer_events(daemon.events(), staged),
                 20, "state_newer for both folders")

        # A full rescan (what `forget` asks of the daemon) looks at every folder again: the ordinary one
        # is tracked again as a new run, the newer ones are still left alone and not logged again.
        assert cli("forget", str(watched / "today"), "--yes", "--config", str(daemon.config)).returncode == 0
        wait_for(lambda: len(cloud.runs()) == 2, 20, "the forgotten folder tracked again")

        for folder, before, name in ((journal_99, before_journal, JOURNAL), (staged, before_tracked, TRACKED)):
            assert snapshot(folder) == before, f"{folder.name} was changed"
            [event] = newer_events(daemon.events(), folder)   # logged once
            assert event["level"] == "warning"
            assert (event["file"], event["schema"]) == (name, 99)
        assert [r.body["name"] for r in cloud.runs()] == ["today", "today"]

        status = cli("status", "--json", "--config", str(daemon.config))
        assert status.returncode == 0, status.stderr
        left_alone = json.loads(status.stdout)["newer"]
        assert left_alone["count"] == 2
        assert {(f["folder"], f["problem"]) for f in left_alone["folders"]} == {
            (str(journal_99), f"{JOURNAL} {NEWER}"), (str(staged), f"{TRACKED} {NEWER}")}
        text = cli("status", "--config", str(daemon.config)).stdout
        assert f"{journal_99}: {JOURNAL} {NEWER}" in text

        scan = cli("scan", "--config", str(daemon.config))
        lines = {line.split()[1]: line for line in scan.stdout.splitlines()[1:-1]}
        for folder in (journal_99, staged):
            assert lines[str(folder)].startswith("newer ")
            assert NEWER in lines[str(folder)]
        assert scan.stdout.splitlines()[-1] == "1 tracked, 0 failed, 0 pending, 0 incomplete, 0 invalid, 2 newer"
    finally:
        assert daemon.stop() == 0
