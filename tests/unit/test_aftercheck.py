"""The second look at a tracked folder's uploaded files, RECHECK_SECONDS later, on a stepped clock."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import structlog
from helpers import write_folder

from watcher.config import FilesConfig, FormatConfig
from watcher.daemon.aftercheck import RECHECK_SECONDS, LateChecks
from watcher.runfolder.folder import inspect_folder
from watcher.runfolder.rundir import RunDir

T0 = 1_800_000_000.0
FILES = {"input.json": '{"in": 1}', "output/result.csv": "a\n1\n", "status.json": '{"duration": 3}'}


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checks(clock: Clock) -> LateChecks:
    return LateChecks(clock)


def track(checks: LateChecks, folder: Path) -> None:
    """What the worker does once `folder` is tracked: schedule the second look at what it uploaded."""
    with RunDir.open(folder) as d:
        run = inspect_folder(d, FilesConfig(), FormatConfig())
        checks.schedule(run, (d.dev, d.ino), "run-42", "app-1")


def looked(checks: LateChecks, clock: Clock, at: float) -> list[dict[str, object]]:
    clock.now = at
    with structlog.testing.capture_logs() as events:
        checks.run_due()
    return events


@pytest.mark.parametrize(("change", "what"), [
    (lambda f: (f / "input.json").write_text('{"in": 1, "more": 2}'), "input.json changed since it was tracked"),
    (lambda f: (f / "output" / "result.csv").unlink(), "output/result.csv vanished since it was tracked"),
    (lambda f: (f / "output" / "late.csv").write_text("x"), "output/late.csv appeared since it was tracked"),
    (lambda f: os.utime(f / "status.json", (T0, T0)), "status.json changed since it was tracked"),
])
def test_a_file_changed_after_tracking_is_reported_once(checks: LateChecks, clock: Clock, watched: Path,
                                                        change, what: str) -> None:  # type: ignore[no-untyped-def]
    folder = write_folder(watched, "run-1", FILES)
    track(checks, folder)
    change(folder)
    assert looked(checks, clock, T0 + RECHECK_SECONDS - 1) == [], "not before its time"
    events = looked(checks, clock, T0 + RECHECK_SECONDS)
    assert [(e["event"], e["log_level"], e["run_id"], e["folder"], e["change"]) for e in events] == \
        [("folder_changed_after_tracking", "warning", "run-42", str(folder), what)]
    assert looked(checks, clock, T0 + 10 * RECHECK_SECONDS) == [], "once"


def test_an_unchanged_folder_says_nothing(checks: LateChecks, clock: Clock, watched: Path) -> None:
    folder = write_folder(watched, "run-1", FILES)
    track(checks, folder)
    assert looked(checks, clock, T0 + RECHECK_SECONDS) == []
    assert len(checks) == 0


def test_a_folder_moved_or_deleted_after_tracking_is_not_looked_at(checks: LateChecks, clock: Clock,
                                                                   watched: Path, tmp_path: Path) -> None:
    moved = write_folder(watched, "moved", FILES)
    deleted = write_folder(watched, "deleted", FILES)
    for folder in (moved, deleted):
        track(checks, folder)
    checks.cancel(moved)
    (tmp_path / "done").mkdir()
    moved.rename(tmp_path / "done" / "moved")
    shutil.rmtree(deleted)
    assert looked(checks, clock, T0 + RECHECK_SECONDS) == []


def test_another_folder_under_the_tracked_name_is_not_looked_at(checks: LateChecks, clock: Clock,
                                                                watched: Path) -> None:
    folder = write_folder(watched, "run-1", FILES)
    track(checks, folder)
    folder.rename(watched / ".old")   # kept, so the new folder cannot get its inode
    write_folder(watched, "run-1", {"input.json": "{}", "output.json": "{}"})
    assert looked(checks, clock, T0 + RECHECK_SECONDS) == []


def test_pending_looks_are_bounded(clock: Clock, watched: Path) -> None:
    checks = LateChecks(clock, max_pending=2)
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]
    with structlog.testing.capture_logs() as events:
        for folder in folders:
            track(checks, folder)
    assert len(checks) == 2
    assert [e["event"] for e in events] == ["recheck_skipped"]
    for folder in folders:
        (folder / "input.json").write_text("[]")
    assert [e["folder"] for e in looked(checks, clock, T0 + RECHECK_SECONDS)] == [str(f) for f in folders[:2]]
