"""The watchdog adapter with a real inotify observer on tmp_path: which events become enqueue() calls.

Within one watch, inotify delivers events in order, so a "sentinel" change made after the change
under test proves that the earlier one was dispatched: once the sentinel's enqueue arrives, the
list of calls is final for everything that came before it in the same watch.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from watcher.daemon.detection import Detector, run_folder_of
from watcher.daemon.observers import polling_factory
from watcher.runfolder.markers import atomic_write


class Calls:
    """A thread-safe list of enqueued folders (the observer's dispatcher thread appends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Path] = []

    def __call__(self, folder: Path) -> None:
        with self._lock:
            self._items.append(folder)

    def all(self) -> list[Path]:
        with self._lock:
            return list(self._items)

    def since(self, n: int) -> list[Path]:
        return self.all()[n:]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def detector(root: Path, calls: Calls) -> Iterator[Detector]:
    d = Detector([root], calls)
    d.start()
    yield d
    d.stop()


def test_folder_created_in_the_root_is_enqueued(detector: Detector, root: Path, calls: Calls) -> None:
    (root / "run-1").mkdir()
    wait_for(lambda: root / "run-1" in calls.all(), 10, "run-1 enqueued")
    assert set(calls.all()) == {root / "run-1"}


def test_dot_folder_renamed_into_place_is_enqueued_under_its_final_name(
        detector: Detector, root: Path, calls: Calls) -> None:
    work = root / ".tmp-run-2"
    work.mkdir()
    (work / "input.json").write_text("{}")   # not watched: the watch on the root is not recursive
    work.rename(root / "run-2")
    wait_for(lambda: root / "run-2" in calls.all(), 10, "run-2 enqueued")
    # The dot-folder's own creation came first in the same watch, so it would be listed by now.
    assert calls.all() == [root / "run-2"]


def test_dot_folders_are_not_enqueued(detector: Detector, root: Path, calls: Calls) -> None:
    (root / ".tmp-hidden").mkdir()
    (root / ".partial").write_text("x")
    (root / "sentinel").mkdir()
    wait_for(lambda: root / "sentinel" in calls.all(), 10, "sentinel enqueued")
    assert calls.all() == [root / "sentinel"]


def test_daemon_files_inside_a_watched_folder_do_not_enqueue(detector: Detector, root: Path, calls: Calls) -> None:
    folder = root / "run-3"
    folder.mkdir()
    wait_for(lambda: folder in calls.all(), 10, "run-3 enqueued")
    assert detector.watch_folder(folder)
    n = len(calls.all())
    # What the daemon writes: atomic writes (temp file + rename) of markers and the journal, a claim.
    atomic_write(folder / ".nextmv-journal.json", b"{}")
    atomic_write(folder / ".nextmv-tracked.json", b"{}")
    (folder / ".nextmv-claim").write_text("{}")
    (folder / ".nextmv-claim").unlink()
    (folder / "sub").mkdir()   # sentinel: one DirCreatedEvent, after all of the above in this watch
    wait_for(lambda: calls.since(n), 10, "sentinel enqueued")
    assert calls.since(n) == [folder]


def test_files_inside_a_folder_enqueue_only_while_it_is_watched(
        detector: Detector, root: Path, calls: Calls) -> None:
    folder = root / "run-4"
    folder.mkdir()
    wait_for(lambda: folder in calls.all(), 10, "run-4 enqueued")

    n = len(calls.all())
    (folder / "input.json").write_text("{}")
    (root / "sentinel-1").mkdir()
    wait_for(lambda: root / "sentinel-1" in calls.since(n), 10, "sentinel-1 enqueued")
    assert folder not in calls.since(n), "a file in an unwatched folder was reported"

    assert detector.watch_folder(folder)
    assert detector.folder_watch_count() == 1
    n = len(calls.all())
    (folder / "DONE").touch()
    wait_for(lambda: folder in calls.since(n), 10, "DONE in the watched folder enqueued it")

    detector.unwatch_folder(folder)
    assert detector.folder_watch_count() == 0
    n = len(calls.all())
    (folder / "output.json").write_text("{}")
    (root / "sentinel-2").mkdir()
    wait_for(lambda: root / "sentinel-2" in calls.since(n), 10, "sentinel-2 enqueued")
    assert folder not in calls.since(n), "a file in an unwatched folder was reported"


def test_a_marker_renamed_into_place_in_a_watched_folder_enqueues_it(
        detector: Detector, root: Path, calls: Calls) -> None:
    folder = root / "run-5"
    folder.mkdir()
    wait_for(lambda: folder in calls.all(), 10, "run-5 enqueued")
    (folder / "DONE.tmp").write_text("")
    assert detector.watch_folder(folder)
    n = len(calls.all())
    (folder / "DONE.tmp").rename(folder / "DONE")
    wait_for(lambda: folder in calls.since(n), 10, "the renamed marker enqueued the folder")


def _replace_and_check_watched(detector: Detector, root: Path, calls: Calls, folder: Path) -> None:
    """After `folder` was replaced under the same name, a worker asks for a watch again (as FolderProcessor
    does for an incomplete folder): a file then written in the new directory must enqueue it."""
    (root / "sentinel").mkdir()
    wait_for(lambda: root / "sentinel" in calls.all(), 10, "sentinel enqueued")
    assert detector.watch_folder(folder)
    n = len(calls.all())
    (folder / "DONE").touch()
    wait_for(lambda: folder in calls.since(n), 2, "DONE in the replaced folder enqueued it")


def test_a_folder_renamed_away_and_replaced_is_watched_again(detector: Detector, root: Path, calls: Calls) -> None:
    folder = root / "run-6"
    folder.mkdir()
    assert detector.watch_folder(folder)
    folder.rename(root / ".old-run-6")       # the old directory lives on (and keeps the old watch)
    folder.mkdir()
    _replace_and_check_watched(detector, root, calls, folder)


def test_a_folder_deleted_and_recreated_with_the_same_inode_is_watched_again(
        detector: Detector, root: Path, calls: Calls) -> None:
    folder = root / "run-7"
    folder.mkdir()
    old_inode = folder.stat().st_ino
    assert detector.watch_folder(folder)
    shutil.rmtree(folder)
    folder.mkdir()                          # a producer retried: same name, new directory
    if folder.stat().st_ino != old_inode:
        pytest.skip("the filesystem did not reuse the inode, the case under test did not occur")
    _replace_and_check_watched(detector, root, calls, folder)


def test_watch_folder_refuses_beyond_the_cap(root: Path, calls: Calls) -> None:
    folders = [root / f"f{i}" for i in range(3)]
    for f in folders:
        f.mkdir()
    detector = Detector([root], calls, max_folder_watches=2)
    assert not detector.watch_folder(folders[0]), "watch_folder before start() must refuse"
    detector.start()
    try:
        assert detector.watch_folder(folders[0])
        assert detector.watch_folder(folders[1])
        assert not detector.watch_folder(folders[2])
        assert detector.watch_folder(folders[0]), "an already watched folder stays watched"
        assert detector.folder_watch_count() == 2
        detector.unwatch_folder(folders[0])
        assert detector.watch_folder(folders[2])
        assert detector.folder_watch_count() == 2
    finally:
        detector.stop()
    assert detector.folder_watch_count() == 0


def test_watch_folder_of_a_vanished_folder_returns_false(detector: Detector, root: Path) -> None:
    assert not detector.watch_folder(root / "gone")
    assert detector.folder_watch_count() == 0


def test_alive_follows_start_and_stop(root: Path, calls: Calls) -> None:
    detector = Detector([root], calls)
    assert not detector.alive()
    detector.start()
    try:
        assert detector.alive()
    finally:
        detector.stop()
    assert not detector.alive()


def test_a_root_missing_at_start_is_reported_and_watched_once_it_exists(
        tmp_path: Path, root: Path, calls: Calls) -> None:
    """Issue 11, item 2: before, start() raised for a missing root, and the daemon did not start."""
    later = tmp_path / "later"
    detector = Detector([root, later], calls)
    detector.start()
    try:
        assert detector.alive()
        assert detector.missing() == {later: "does not exist"}
        assert detector.check_roots() == []
        (root / "run-1").mkdir()
        wait_for(lambda: root / "run-1" in calls.all(), 10, "run-1 enqueued: the other root is watched")

        later.mkdir()
        assert detector.check_roots() == [later]
        assert detector.missing() == {}
        assert detector.check_roots() == []   # the same directory: nothing to do
        (later / "run-2").mkdir()
        wait_for(lambda: later / "run-2" in calls.all(), 10, "run-2 enqueued from the root created later")
    finally:
        detector.stop()


def test_a_root_deleted_and_recreated_is_watched_anew(detector: Detector, root: Path, calls: Calls) -> None:
    root.rmdir()
    assert detector.check_roots() == []
    assert detector.missing() == {root: "does not exist"}
    root.mkdir()
    (root / "early").mkdir()   # before the new watch: the caller scans the roots watched anew
    assert detector.check_roots() == [root]
    (root / "run-1").mkdir()
    wait_for(lambda: root / "run-1" in calls.all(), 10, "run-1 enqueued from the new directory")


def test_a_root_replaced_between_two_checks_is_watched_anew(detector: Detector, root: Path, calls: Calls) -> None:
    root.rename(root.with_name("old-runs"))
    root.mkdir()
    assert detector.check_roots() == [root]   # another directory (inode) at the path
    (root / "run-1").mkdir()
    wait_for(lambda: root / "run-1" in calls.all(), 10, "run-1 enqueued from the new directory")


@pytest.mark.parametrize(("replacement", "problem"), [("symlink", "is a symlink (not followed)"),
                                                      ("file", "is not a directory")])
def test_a_root_replaced_by_a_symlink_or_a_file_is_missing_and_not_followed(
        detector: Detector, root: Path, tmp_path: Path, calls: Calls, replacement: str, problem: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.rmdir()
    if replacement == "symlink":
        root.symlink_to(elsewhere, target_is_directory=True)
    else:
        root.write_text("")
    assert detector.check_roots() == []   # no watch is made on what is there now
    assert detector.missing() == {root: problem}
    assert detector.check_roots() == []
    root.unlink()
    root.mkdir()
    assert detector.check_roots() == [root]
    assert detector.missing() == {}


ROOTS = ["/w/a", "/w/b"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/w/a/run-1", "/w/a/run-1"),                       # the run folder itself
    ("/w/a/run-1/input.json", "/w/a/run-1"),            # a file at its root
    ("/w/a/run-1/input/x/y.csv", "/w/a/run-1"),         # nested deeper
    ("/w/b/run-2/DONE", "/w/b/run-2"),                  # second root
    ("/w/a/run-1/.hidden", "/w/a/run-1"),               # user dotfiles inside a folder still count
    ("/w/a/run-1/input/.nextmv-x", "/w/a/run-1"),       # .nextmv- only matters at the folder root
    ("/w/a/.tmp-run", None),                            # dot-folder
    ("/w/a/.tmp-run/input.json", None),                 # inside a dot-folder
    ("/w/a/run-1/.nextmv-tracked.json", None),          # the daemon's own files
    ("/w/a/run-1/.nextmv-journal.json.tmp-1-2", None),  # and their temporary files
    ("/w/a", None),                                     # the root itself
    ("/w/a/", None),
    ("/w/ab/run", None),                                # a sibling that shares a prefix
    ("/elsewhere/run", None),                           # outside every root
])
def test_run_folder_of(path: str, expected: str | None) -> None:
    got = run_folder_of(path, ROOTS)
    assert got == (Path(expected) if expected is not None else None)



def test_a_polled_root_deleted_and_recreated_is_watched_anew(root: Path, calls: Calls) -> None:
    """`polling: true` (NFS, SMB): the polling emitter stops when its directory is gone, as inotify's does."""
    detector = Detector([root], calls, observer_factory=polling_factory(0.05))
    detector.start()
    try:
        shutil.rmtree(root)
        assert detector.check_roots() == []
        assert detector.missing() == {root: "does not exist"}
        root.mkdir()
        assert detector.check_roots() == [root]
        (root / "run-1").mkdir()
        wait_for(lambda: root / "run-1" in calls.all(), 10, "run-1 enqueued by the new polling watch")
    finally:
        detector.stop()


def _inotify_masks() -> dict[int, int]:
    """The inotify watches of this process, inode -> event mask, as the kernel lists them (fdinfo)."""
    masks: dict[int, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("inotify "):
                fields = dict(f.split(":", 1) for f in line.split()[1:])
                masks[int(fields["ino"], 16)] = int(fields["mask"], 16)
    return masks


IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10


def test_a_root_is_not_watched_for_opens_and_a_run_folder_is(detector: Detector, root: Path) -> None:
    """Opening a run folder (the daemon does it about ten times per folder tracked) is an event in its
    root: the root's watch must not ask for opens and closes, or each wakes the observer for nothing. A
    run folder's own watch asks for them (open files tell a file is being written)."""
    folder = root / "run-1"
    folder.mkdir()
    assert detector.watch_folder(folder)
    wait_for(lambda: folder.stat().st_ino in _inotify_masks(), 10, "the run folder's watch")
    masks = _inotify_masks()
    assert masks[root.stat().st_ino] & (IN_OPEN | IN_CLOSE_NOWRITE) == 0
    assert masks[folder.stat().st_ino] & IN_OPEN
