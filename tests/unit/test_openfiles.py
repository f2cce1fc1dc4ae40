"""Open files as inotify's events tell them, per watched folder (settle mode), on a stepped clock."""

from __future__ import annotations

from pathlib import Path

from watcher.daemon.openfiles import CLOSED, CLOSED_WRITE, GONE, OPENED, OpenFiles
from watcher.runfolder.completion import Activity

A = Path("/runs/a")
T0 = 1_800_000_000.0


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


def test_a_file_is_open_from_its_open_to_its_close() -> None:
    clock = Clock()
    files = OpenFiles(clock)
    files.start(A)
    files.record(A, "output.json", OPENED)
    files.record(A, "output/part.csv", OPENED)
    assert files.activity(A) == Activity(("output.json", "output/part.csv"), None)
    clock.now = T0 + 3
    files.record(A, "output.json", CLOSED_WRITE)
    files.record(A, "output/part.csv", CLOSED)
    assert files.activity(A) == Activity((), T0 + 3), "a close after reading is no write"


def test_only_the_last_event_of_a_file_counts() -> None:
    # watchdog drops an event equal to the one before it: two opens and two closes may arrive as one
    # open and one close, or as open, open, close; the file is closed once its last event is a close.
    files = OpenFiles()
    files.start(A)
    for what in (OPENED, OPENED, CLOSED, CLOSED):
        files.record(A, "logs.txt", what)
    assert files.activity(A) == Activity((), None)
    for what in (OPENED, CLOSED, OPENED):
        files.record(A, "logs.txt", what)
    assert files.activity(A) == Activity(("logs.txt",), None)


def test_a_rename_carries_the_open_file_and_a_deletion_drops_it() -> None:
    files = OpenFiles()
    files.start(A)
    files.record(A, "out.tmp", OPENED)
    files.record(A, "out.tmp", GONE, "output.csv")
    assert files.activity(A) == Activity(("output.csv",), None)
    files.record(A, "output.csv", GONE)
    assert files.activity(A) == Activity((), None)
    files.record(A, "closed.csv", GONE, "renamed.csv")
    assert files.activity(A) == Activity((), None), "a closed file renamed is not open"


def test_only_watched_folders_are_recorded_and_a_stopped_one_is_forgotten() -> None:
    files = OpenFiles()
    files.record(A, "output.json", OPENED)   # a late event of a folder no longer watched
    assert files.activity(A) is None
    files.start(A)
    files.record(A, "output.json", OPENED)
    files.start(A)
    assert files.activity(A) == Activity(("output.json",), None), "watching again keeps what is known"
    files.stop(A)
    assert files.activity(A) is None


def test_lost_events_clear_the_open_files_and_a_reload_forgets_every_folder() -> None:
    clock = Clock()
    files = OpenFiles(clock)
    files.start(A)
    files.record(A, "a.json", CLOSED_WRITE)
    files.record(A, "output.json", OPENED)
    files.clear()
    assert files.activity(A) == Activity((), T0)
    files.reset()
    assert files.activity(A) is None
