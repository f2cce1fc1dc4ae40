"""FolderIndex: what the daemon knows about each folder, the counts status and metrics read, and the
queue behind it, with a stepped clock."""

from __future__ import annotations

import gc
from pathlib import Path, PurePath

from watcher.daemon.index import Entry, FolderIndex, Next, Stage
from watcher.daemon.shard import Shard

A, B, C, D = (Path(f"/runs/{n}") for n in "abcd")
OTHER = Path("/elsewhere/x")
NOW = 1000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def worked(index: FolderIndex, folder: Path, found: Next) -> None:
    """One worker turn: the folder is due, taken, and settled with `found`."""
    assert index.take(timeout=0) == folder
    index.settle(folder, found)


def test_offered_folders_count_as_queued_until_a_worker_says_otherwise() -> None:
    index = FolderIndex(Clock())
    index.offer(A)
    index.offer(B)
    assert index.counts() == {"queued": 2, "in_flight": 0, "retry_wait": 0, "parked": 0}
    assert index.take(timeout=0) == A
    assert index.counts() == {"queued": 1, "in_flight": 1, "retry_wait": 0, "parked": 0}
    index.settle(A, Next(Stage.INCOMPLETE))
    assert index.counts() == {"queued": 1, "in_flight": 0, "retry_wait": 0, "parked": 0}, \
        "an incomplete folder is not pending"
    assert index.incomplete() == {A: NOW}


def test_a_retry_waits_then_counts_as_queued_once_due() -> None:
    clock = Clock()
    index = FolderIndex(clock)
    index.offer(A)
    worked(index, A, Next(Stage.RETRY_WAIT, at=NOW + 30))
    assert index.counts()["retry_wait"] == 1
    assert index.take(timeout=0) is None
    clock.now = NOW + 30
    assert index.counts() == {"queued": 1, "in_flight": 0, "retry_wait": 0, "parked": 0}
    assert index.take(timeout=0) == A


def test_the_oldest_pending_age_runs_from_when_the_folder_was_first_seen_complete() -> None:
    clock = Clock()
    index = FolderIndex(clock)
    index.offer(A)
    index.offer(B)
    assert index.oldest_pending_since() is None, "not known to be complete yet"
    worked(index, A, Next(Stage.RETRY_WAIT, at=NOW + 5))
    clock.now = NOW + 5
    worked(index, B, Next(Stage.PARKED, scope="*"))
    worked(index, A, Next(Stage.RETRY_WAIT, at=NOW + 60))
    assert index.oldest_pending_since() == NOW, "kept across retries: the first time it was seen complete"
    clock.now = NOW + 60
    worked(index, A, Next(Stage.FINISHED, inode=7))
    assert index.oldest_pending_since() == NOW + 5


def test_parked_folders_wait_for_their_pause_and_ignore_events() -> None:
    index = FolderIndex(Clock())
    for folder in (A, B, C):
        index.offer(folder)
    worked(index, A, Next(Stage.PARKED, scope="*"))
    worked(index, B, Next(Stage.PARKED, scope="*"))
    worked(index, C, Next(Stage.PARKED, scope="app-2"))
    index.offer(A)   # an event for a parked folder: it stays parked
    assert index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 3}
    assert index.parked_scopes() == {"*", "app-2"}
    assert index.unpark("*") == 2
    assert index.counts() == {"queued": 2, "in_flight": 0, "retry_wait": 0, "parked": 1}
    assert {index.take(timeout=0), index.take(timeout=0)} == {A, B}


def test_finished_folders_keep_only_their_inode() -> None:
    index = FolderIndex(Clock())
    index.finished(A, 41)
    assert index.is_finished(A, 41)
    assert not index.is_finished(A, 42), "a new folder reusing the name is not finished"
    assert index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 0}
    index.offer(A)   # an event: looked at again (its marker may have been removed)
    assert not index.is_finished(A, 41)
    worked(index, A, Next(Stage.FINISHED, inode=43))
    entry = index.entry(A)
    assert entry is not None and (entry.stage, entry.inode) == (Stage.FINISHED, 43)


def test_an_event_during_the_work_brings_an_incomplete_folder_back_at_once() -> None:
    index = FolderIndex(Clock())
    index.offer(A)
    assert index.take(timeout=0) == A
    index.offer(A)   # the marker appeared while the worker looked
    index.settle(A, Next(Stage.INCOMPLETE))
    assert index.take(timeout=0) == A


def test_an_event_during_the_work_does_not_hurry_a_retry() -> None:
    """The change that made the attempt fail is what the event reports; the retry waits for it to end."""
    clock = Clock()
    index = FolderIndex(clock)
    index.offer(A)
    assert index.take(timeout=0) == A
    index.offer(A)
    index.settle(A, Next(Stage.RETRY_WAIT, at=NOW + 5))
    assert index.take(timeout=0) is None
    clock.now = NOW + 5
    assert index.take(timeout=0) == A


def test_gone_and_pruned_folders_leave_the_index() -> None:
    index = FolderIndex(Clock())
    for folder in (A, B, C, D):
        index.offer(folder)
    worked(index, A, Next(Stage.GONE))
    worked(index, B, Next(Stage.FINISHED, inode=1))
    worked(index, C, Next(Stage.INCOMPLETE))
    assert A not in index
    # D is still queued: a listing without it forgets only what nothing else will visit.
    assert index.prune(present=[], roots=[Path("/runs")]) == 2
    assert B not in index and C not in index and D in index
    assert index.size() == 1


def test_dropping_a_watched_path_keeps_only_its_folders_in_flight() -> None:
    index = FolderIndex(Clock())
    for folder in (A, B, OTHER):
        index.offer(folder)
    assert index.take(timeout=0) == A
    dropped = index.drop_under([Path("/runs")])
    assert dropped == [B]
    assert A in index and OTHER in index and B not in index
    assert index.take(timeout=0) == OTHER, "B left the queue too"


def test_incomplete_too_long_is_reported_once_per_folder() -> None:
    clock = Clock()
    index = FolderIndex(clock)
    index.offer(A)
    worked(index, A, Next(Stage.INCOMPLETE, at=NOW + 10))
    clock.now = NOW + 10
    assert index.incomplete_too_long(limit=60) == []
    worked(index, A, Next(Stage.INCOMPLETE, at=NOW + 100))
    clock.now = NOW + 100
    assert index.incomplete_too_long(limit=60) == [(A, NOW)]
    assert index.incomplete_too_long(limit=60) == [], "reported once"
    worked(index, A, Next(Stage.INCOMPLETE))
    assert index.incomplete_too_long(limit=60) == [], "still reported, across looks"


def test_finished_folders_are_kept_apart_from_the_live_ones_through_every_move() -> None:
    """The reads behind status, metrics and the main loop go over the live entries only (with 100,000
    folders tracked, nearly all are finished): a folder is in exactly one half, whatever it goes through."""
    index = FolderIndex(Clock())
    entries = index._entries   # the split is what this test is about

    def where(folder: Path) -> list[str]:
        halves = (("live", folder in entries.live), ("finished", str(folder) in entries.finished))
        return [name for name, found in halves if found]

    index.finished(A, 41)
    assert where(A) == ["finished"]
    index.offer(A)                                     # an event: looked at again
    assert where(A) == ["live"]
    worked(index, A, Next(Stage.FINISHED, inode=42))
    assert where(A) == ["finished"] and index.size() == 1
    index.offer(B)
    worked(index, B, Next(Stage.RETRY_WAIT, at=NOW + 60))
    assert where(B) == ["live"]
    entry = index.entry(B)
    assert entry is not None and entry.stage is Stage.RETRY_WAIT
    assert index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 1, "parked": 0}
    index.forget(A)
    assert where(A) == [] and A not in index and index.size() == 1


def test_many_finished_folders_leave_the_status_reads_alone() -> None:
    index = FolderIndex(Clock())
    for n in range(1000):
        index.finished(Path(f"/runs/done-{n}"), n)
    index.offer(A)
    worked(index, A, Next(Stage.PARKED, scope="api"))
    assert len(index._entries.live) == 1   # what the reads below go over
    assert index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 1}
    assert index.parked_scopes() == {"api"} and index.oldest_pending_since() == NOW
    assert index.size() == 1001 and index.left_alone() == []


def test_a_shard_index_takes_only_its_own_folders() -> None:
    shard = Shard(1, 2)
    index = FolderIndex(Clock(), shard)
    folders = [Path(f"/runs/run-{n}") for n in range(40)]
    for folder in folders:
        index.offer(folder)
    own = [f for f in folders if shard.owns(f)]
    assert 0 < len(own) < len(folders)
    assert index.size() == len(own) and index.counts()["queued"] == len(own)
    assert all(index.owns(f) == (f in own) for f in folders)


def test_a_finished_folder_keeps_its_path_as_a_string_and_its_inode_only() -> None:
    """With 100,000 folders tracked, the finished entries are most of a process's memory: each is kept as
    the path's string and an int (about 210 bytes), not as the Path the scan made (about 350 bytes) and
    an Entry: once the scan lets go of its Paths, none of them is left, and no Entry either."""
    def alive(kind: type) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, kind))

    paths, entries = alive(PurePath), alive(Entry)
    folders = [Path(f"/runs/tracked-{n:06d}") for n in range(5_000)]   # as a scan makes them
    index = FolderIndex(Clock())
    for n, folder in enumerate(folders):
        index.finished(folder, n)
    assert alive(PurePath) - paths >= 5_000
    del folders, folder
    assert alive(PurePath) - paths < 100, "the index keeps the scan's Paths"
    assert alive(Entry) - entries < 100, "the index keeps an Entry per finished folder"
    assert index.size() == 5_000
    entry = index.entry(Path("/runs/tracked-000007"))
    assert entry is not None and entry.stage is Stage.FINISHED and entry.inode == 7
    assert index.is_finished(Path("/runs/tracked-000007"), 7) and not index.is_finished(Path("/runs/tracked-000007"), 8)
