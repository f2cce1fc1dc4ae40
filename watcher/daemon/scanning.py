"""Folders on disk into the index: the start-up scan and the periodic reconcile.

The start-up scan lists every watched path once (one `os.scandir` each, markers by lstat: two stats
per folder) and offers each unfinished folder as it is found, so the first uploads start while it
goes on; finished folders are recorded as such (with their inode). The reconcile does the same every
`reconcile_seconds`, and on request, for anything the observers missed; it skips folders the index
knows to be finished (same name, same inode) except on a full pass, which re-reads their markers (a
`retry` or `forget` removed one), and forgets the finished and incomplete folders that are gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watcher.config import Config
from watcher.daemon.index import FolderIndex
from watcher.runfolder.markers import StateStore
from watcher.runfolder.scan import iter_entries, quick_state


@dataclass(frozen=True)
class Scanned:
    queued: int
    finished: int
    seconds: float


def startup_scan(config: Config, store: StateStore, index: FolderIndex, *, stop: threading.Event,
                 resume_after_tracking: Callable[[Path], object]) -> Scanned | None:
    """Offer every unfinished folder; record the finished ones. A tracked folder that `after_tracking`
    should have moved or deleted (a crash came between the marker and the move) is handed to
    `resume_after_tracking`. None when `stop` was set meanwhile."""
    queued = finished = 0
    started = time.monotonic()
    for watch in config.watch:
        for folder, inode in iter_entries(watch.path):
            if stop.is_set():
                return None
            if not index.owns(folder):   # another process's (`processes`)
                continue
            state = quick_state(store, folder)
            if state is None:
                index.offer(folder)
                queued += 1
                continue
            index.finished(folder, inode)
            finished += 1
            if state == "tracked" and config.after_tracking != "keep":
                resume_after_tracking(folder)
    return Scanned(queued, finished, round(time.monotonic() - started, 3))


def reconcile(config: Config, store: StateStore, index: FolderIndex, *, full: bool) -> int:
    """Offer the folders the observers may have missed; returns how many."""
    busy = set(index.snapshot()) | index.in_flight()
    queued = 0
    present: list[str] = []   # this process's folders only: the index holds no other
    for watch in config.watch:
        for folder, inode in iter_entries(watch.path):
            if not index.owns(folder):
                continue
            present.append(str(folder))
            if folder in busy:
                continue
            known_finished = index.is_finished(folder, inode)
            if known_finished and not full:
                continue
            if quick_state(store, folder) is not None:
                if not known_finished:
                    index.finished(folder, inode)
                continue
            index.offer(folder)   # its marker may have been removed (retry, forget): track it again
            queued += 1
    index.prune(present, [w.path for w in config.watch])
    return queued
