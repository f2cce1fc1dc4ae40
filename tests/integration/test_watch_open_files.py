"""Open files of watched incomplete folders, with a real inotify observer on tmp_path (settle mode).

Within one watch inotify delivers events in order, so once a file written after the change under test
is recorded as closed, the earlier events were dispatched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from watcher.config import WatchConfig
from watcher.daemon.detectors import Detectors
from watcher.daemon.openfiles import OpenFiles
from watcher.runfolder.completion import Activity


class Calls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Path] = []

    def __call__(self, folder: Path) -> None:
        with self._lock:
            self._items.append(folder)

    def count(self) -> int:
        with self._lock:
            return len(self._items)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def files() -> OpenFiles:
    return OpenFiles()


@pytest.fixture
def detectors(watched: Path, calls: Calls, files: OpenFiles) -> Iterator[Detectors]:
    d = Detectors([WatchConfig(path=watched, application_id="app-1")], calls, open_files=files)
    d.start()
    yield d
    d.stop()


def test_a_file_kept_open_is_recorded_until_it_is_closed(detectors: Detectors, files: OpenFiles,
                                                         watched: Path, calls: Calls) -> None:
    folder = watched / "run-1"
    folder.mkdir()
    assert detectors.watch_folder(folder)
    f = open(folder / "output.csv", "w")   # noqa: SIM115 - kept open on purpose
    try:
        f.write("a,b\n")
        f.flush()
        wait_for(lambda: files.activity(folder) == Activity(("output.csv",), None), 10, "output.csv open")
    finally:
        f.close()
    wait_for(lambda: (a := files.activity(folder)) is not None and not a.open_files and a.last_write, 10,
             "output.csv closed after writing")


def test_reads_are_recorded_but_wake_nothing(detectors: Detectors, files: OpenFiles, watched: Path,
                                             calls: Calls) -> None:
    folder = watched / "run-1"
    folder.mkdir()
    (folder / "input.json").write_text("{}")
    (folder / "sentinel.txt").write_text("s")
    wait_for(lambda: calls.count() == 1, 10, "the folder's creation enqueued")
    assert detectors.watch_folder(folder)
    for _ in range(3):
        (folder / "input.json").read_text()   # as the daemon's own reads
    with open(folder / "sentinel.txt") as sentinel:
        # Events of one watch arrive in order: once the sentinel is open, the reads were dispatched.
        wait_for(lambda: files.activity(folder) == Activity(("sentinel.txt",), None), 10, "sentinel open")
        assert sentinel.read() == "s"
    assert calls.count() == 1, "a read enqueued its folder"


def test_the_output_directory_is_watched_and_dropped_with_its_folder(detectors: Detectors, files: OpenFiles,
                                                                     watched: Path) -> None:
    folder = watched / "run-1"
    (folder / "output").mkdir(parents=True)
    assert detectors.watch_folder(folder)
    assert detectors.watch_folder(folder / "output")
    with open(folder / "output" / "part.csv", "w") as f:
        f.write("x")
        f.flush()
        wait_for(lambda: files.activity(folder) == Activity(("output/part.csv",), None), 10,
                 "output/part.csv open")
    detectors.unwatch_folder(folder)
    assert files.activity(folder) is None
    assert detectors.members()[0].folder_watch_count() == 0, "the output/ watch went with its folder"


def test_a_folder_not_watched_records_nothing(detectors: Detectors, files: OpenFiles, watched: Path) -> None:
    folder = watched / "run-1"
    folder.mkdir()
    (folder / "output.csv").write_text("x")
    assert files.activity(folder) is None
