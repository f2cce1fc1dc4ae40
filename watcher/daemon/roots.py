"""The watches on the watched paths themselves (the roots) of one observer, while the paths come and go.

A root is watched while `probe` finds a directory there (a symlink put in its place is not followed).
The main loop calls `check()` on every tick: it compares the directory now at each root (device, inode;
one lstat) with the one being watched. A root that went away loses its watch (its emitter died with it:
inotify's IN_DELETE_SELF, or a polling snapshot that failed), and one that is back, or replaced by another
directory, gets a new watch and is returned, so that the caller scans it. `missing()` says which roots
have no watch, and why.

One `RootWatches` per observer: a Detector makes a new one with each observer it starts, and drops it
with it. Only the main loop calls `start()` and `check()`; anyone may call `missing()`. `_lock` guards
the two maps and is never held while calling the observer (see `watcher.daemon.detection`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver, ObservedWatch

from watcher.runfolder.scan import WatchedDir, probe

Identity = tuple[int, int]


class RootWatches:
    def __init__(self, observer: BaseObserver, handler: FileSystemEventHandler, roots: list[Path],
                 event_filter: list[type[FileSystemEvent]]) -> None:
        self.observer = observer
        self.handler = handler
        self.roots = list(roots)
        self.event_filter = event_filter
        self._lock = threading.Lock()
        self._watched: dict[Path, tuple[ObservedWatch, Identity]] = {}
        self._missing: dict[Path, str] = {}

    def start(self) -> None:
        """Watch every root that is a directory now (before or after the observer starts); the others are
        missing. Raises OSError when a root that is there cannot be watched (an inotify limit, say)."""
        for root in self.roots:
            found, watch = self._schedule(root)
            self._publish(root, found, watch)

    def check(self) -> list[Path]:
        """Drop the watch of each root that is gone or is another directory now; watch each root that is a
        directory and has none. Returns the roots watched anew. A root that cannot be watched stays
        missing, with the error as its reason, and is tried again at the next check."""
        with self._lock:
            watched = dict(self._watched)
        fresh: list[Path] = []
        for root in self.roots:
            found = probe(root)
            known = watched.get(root)
            if known is not None and known[1] == found.identity:
                continue
            if known is not None:
                with contextlib.suppress(KeyError, OSError):   # its emitter may be gone already
                    self.observer.unschedule(known[0])
            watch: ObservedWatch | None = None
            if found.identity is not None:
                try:
                    found, watch = self._schedule(root)
                except OSError as exc:
                    found = WatchedDir(root, None, f"cannot be watched: {exc.strerror or exc}")
            self._publish(root, found, watch)
            if watch is not None:
                fresh.append(root)
        return fresh

    def missing(self) -> dict[Path, str]:
        """The roots without a watch now, and why (does not exist, is a symlink (not followed), ...)."""
        with self._lock:
            return dict(self._missing)

    def _schedule(self, root: Path) -> tuple[WatchedDir, ObservedWatch | None]:
        """Watch `root` if it is a directory now. Its identity is taken before the watch is made: should the
        directory be replaced in between, the next check sees another one and watches anew. Raises OSError
        for anything but the root being gone (or not a directory) meanwhile."""
        found = probe(root)
        if found.identity is None:
            return found, None
        try:
            watch = self.observer.schedule(self.handler, os.fspath(root), recursive=False,
                                           event_filter=self.event_filter)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            return WatchedDir(root, None, "does not exist"), None
        return found, watch

    def _publish(self, root: Path, found: WatchedDir, watch: ObservedWatch | None) -> None:
        with self._lock:
            if watch is not None and found.identity is not None:
                self._watched[root] = (watch, found.identity)
                self._missing.pop(root, None)
            else:
                self._watched.pop(root, None)
                self._missing[root] = found.problem
