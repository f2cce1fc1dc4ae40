"""The worker in settle mode (issue 11): a folder whose writer may be mid-file waits, says why, and is
looked at again by polling; what was tracked is looked at once more later (a stepped clock)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from helpers import TRACKED, marker, write_folder
from worker_harness import T0, Harness

from watcher.daemon.aftercheck import RECHECK_SECONDS, LateChecks
from watcher.daemon.index import Stage
from watcher.daemon.worker import POLL_SECONDS
from watcher.runfolder.completion import Activity


@pytest.fixture
def h(tmp_path: Path, watched: Path) -> Harness:
    return Harness(tmp_path, watched, watchable=True, completion={"marker": None, "settle_seconds": 5})


def test_a_half_written_json_output_waits_says_why_and_is_polled(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "s1", {"input.json": '{"in": 1}', "output.json": '{"solutions": ['},
                          marker=None)
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert (found.stage, found.at) == (Stage.INCOMPLETE, T0 + POLL_SECONDS), "polled although watched"
    assert [(e["event"], e["log_level"], e["reason"]) for e in events if e["event"] == "folder_incomplete"] == \
        [("folder_incomplete", "info", "output.json is not complete JSON")]
    entry = h.index.entry(folder)
    assert entry is not None and entry.reason == "output.json is not complete JSON"
    assert marker(folder) is None
    h.clock.now = T0 + POLL_SECONDS
    with structlog.testing.capture_logs() as events:
        h.step(folder)
    assert [e for e in events if e["event"] == "folder_incomplete"] == [], "said once, not at every look"
    with open(folder / "output.json", "a") as f:
        f.write("1]}")
    h.clock.now = T0 + 2 * POLL_SECONDS
    assert h.step(folder).stage is Stage.FINISHED
    assert marker(folder) is not None


def test_a_file_open_holds_the_folder(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "csv", {"input.json": "{}", "output.csv": "a,b\n"}, marker=None)
    h.processor.activity = lambda f: Activity(open_files=("output.csv",)) if f == folder else None
    found = h.step(folder)
    assert (found.stage, found.reason) == (Stage.INCOMPLETE, "output.csv is open (not closed since it was opened)")
    assert found.at == T0 + POLL_SECONDS
    h.processor.activity = lambda f: Activity()
    h.clock.now = T0 + POLL_SECONDS
    assert h.step(folder).stage is Stage.FINISHED


def test_the_input_and_output_directories_of_an_incomplete_folder_are_watched(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "dirs", {"input/a.csv": "a", "output/b.csv": "b"}, marker=None)
    h.clock.now = T0 - 10**9   # long before the files were written: settling
    found = h.step(folder)
    assert found.stage is Stage.INCOMPLETE
    assert h.watch_requests == [folder, folder / "input", folder / "output"]


def test_a_tracked_folder_is_looked_at_again_unless_it_was_moved(h: Harness, watched: Path) -> None:
    h.processor.late_checks = checks = LateChecks(h.clock)
    kept = write_folder(watched, "kept", {"input.json": "{}", "output.json": "{}"}, marker=None)
    assert h.step(kept).stage is Stage.FINISHED
    assert len(checks) == 1
    h.processor.after_tracked = lambda folder, d: True   # as after_tracking: move
    moved = write_folder(watched, "moved", {"input.json": "{}", "output.json": "{}"}, marker=None)
    assert h.step(moved).stage is Stage.GONE
    assert len(checks) == 1, "nothing to look at in a moved folder"
    (kept / "output.json").write_text('{"late": true}')
    h.clock.now = T0 + RECHECK_SECONDS
    with structlog.testing.capture_logs() as events:
        checks.run_due()
    assert [(e["event"], e["run_id"]) for e in events] == [("folder_changed_after_tracking", "run-kept")]
    assert (kept / TRACKED).exists()
