"""A second look at a tracked folder's files, `RECHECK_SECONDS` after tracking.

A producer that went on writing after its folder looked complete (settle mode cannot know every
writer; a marker written too early) leaves a run in Nextmv that is not what the folder now holds.
Nothing can undo that, but the operator should know: once, `RECHECK_SECONDS` after a folder was
tracked, the files that were uploaded are looked at again (size, modification time, inode, through
the open folder), and if any changed, vanished or appeared, `folder_changed_after_tracking` is logged
(warning, with the run ID). This is a timer in the main loop (`run_due`, each tick), not a filesystem
watch: finished folders cost no inotify watch. A folder moved or deleted after tracking is not looked
at (`cancel`), nor one whose name now leads to another directory.

Memory: at most `max_pending` folders wait (beyond that a folder is not rechecked: `recheck_skipped`
at debug), each with the fingerprint made for its upload.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from watcher.errors import FolderError
from watcher.runfolder.folder import Fingerprint, RunFolder, fingerprint, fingerprint_changes
from watcher.runfolder.rundir import RunDir

log = structlog.get_logger("watcher.daemon.aftercheck")

RECHECK_SECONDS = 120.0
MAX_PENDING = 10_000
MAX_PER_TICK = 50   # the main loop has other chores: the rest waits for the next tick


@dataclass(frozen=True)
class _Pending:
    folder: Path
    identity: tuple[int, int]   # (device, inode) of the tracked directory
    run: RunFolder              # what was uploaded (its open directory dropped)
    before: Fingerprint
    run_id: str
    application_id: str


class LateChecks:
    """Thread-safe: workers `schedule` and `cancel`; the main loop calls `run_due`. The lock guards only
    the pending checks and is never held while a folder is read."""

    def __init__(self, clock: Callable[[], float] = time.time, *, delay: float = RECHECK_SECONDS,
                 max_pending: int = MAX_PENDING) -> None:
        self.clock = clock
        self.delay = delay
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Path]] = []
        self._pending: dict[Path, tuple[float, _Pending]] = {}
        self._seq = itertools.count()

    def schedule(self, run: RunFolder, identity: tuple[int, int], run_id: str, application_id: str) -> None:
        """`run` (as inspected and uploaded) was tracked as `run_id`: look at its files again later."""
        pending = _Pending(run.path, identity, replace(run, dir=None), fingerprint(run), run_id, application_id)
        at = self.clock() + self.delay
        with self._lock:
            full = len(self._pending) >= self.max_pending and run.path not in self._pending
            if not full:
                self._pending[run.path] = (at, pending)
                heapq.heappush(self._heap, (at, next(self._seq), run.path))
        if full:
            log.debug("recheck_skipped", folder=str(run.path), run_id=run_id, pending=self.max_pending)

    def cancel(self, folder: Path) -> None:
        """`folder` was moved or deleted after tracking: nothing to look at."""
        with self._lock:
            self._pending.pop(folder, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def run_due(self, limit: int = MAX_PER_TICK) -> int:
        """Look again at the folders due now (at most `limit`); returns how many were looked at."""
        now = self.clock()
        due: list[_Pending] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now and len(due) < limit:
                at, _, folder = heapq.heappop(self._heap)
                entry = self._pending.get(folder)
                if entry is not None and entry[0] == at:   # not cancelled, not scheduled again since
                    del self._pending[folder]
                    due.append(entry[1])
        for pending in due:
            self._check(pending)
        return len(due)

    def _check(self, p: _Pending) -> None:
        try:
            with RunDir.open(p.folder) as d:
                if (d.dev, d.ino) != p.identity:
                    return   # the name leads to another folder now
                change = fingerprint_changes(replace(p.run, dir=d), p.before, "since it was tracked")
        except (FolderError, OSError):
            return   # gone (moved or deleted by someone), or unreadable: nothing to compare
        if change is not None:
            log.warning("folder_changed_after_tracking", folder=str(p.folder), application_id=p.application_id,
                        run_id=p.run_id, change=change,
                        hint="its producer went on writing after the folder looked complete: the run has the "
                             "files as they were then; write the completion marker last (completion.marker)")
