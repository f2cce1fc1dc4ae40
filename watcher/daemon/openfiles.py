"""Which files of the watched incomplete folders are open, as inotify's open and close events tell.

Settle mode must not take a writer that pauses mid-file for a finished folder (see
`watcher.runfolder.completion`). inotify reports IN_OPEN (watchdog's `FileOpenedEvent`) when any
process opens a file of a watched directory, IN_CLOSE_WRITE (`FileClosedEvent`) when a file opened
for writing is closed, IN_CLOSE_NOWRITE (`FileClosedNoWriteEvent`) when one opened for reading is.
What is known per file is only whether its last event was an open or a close: watchdog's event queue
drops an event equal to the one just before it, so counting opens against closes could drift and hold
a folder forever, while the last event of a file survives that dropping. The price: two processes
with one file open at once look closed once either closes it (a reader next to a writer); the
`.json` check of the completion rules covers what events miss.

One owner: the detection handler (`record`, on watchdog's dispatcher thread) and the detectors
(`start`, `stop`, `clear`) change it; the workers read it (`activity`). Only folders being watched are
recorded (`start` before their watch is made, `stop` when it is dropped), so a late event of a
finished folder leaves nothing behind. Memory: the folders watched, and per folder only the files
open now. `clock` is wall-clock time, like the modification times that completion compares it with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watcher.runfolder.completion import Activity

OPENED = "opened"
CLOSED_WRITE = "closed_write"
CLOSED = "closed"        # closed after reading
GONE = "gone"            # deleted or renamed away


@dataclass
class _Folder:
    open: set[str] = field(default_factory=set)
    last_write: float | None = None


class OpenFiles:
    """Thread-safe; its lock guards only its own fields and is never held while calling anything else."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._folders: dict[Path, _Folder] = {}

    def start(self, folder: Path) -> None:
        """Record events of `folder` from now on (what is known already is kept)."""
        with self._lock:
            self._folders.setdefault(folder, _Folder())

    def stop(self, folder: Path) -> None:
        """`folder` is no longer watched: forget it; its later events are ignored."""
        with self._lock:
            self._folders.pop(folder, None)

    def clear(self) -> None:
        """Events were lost (an overflow, a new observer): nothing known is trusted any more, so every
        folder's open files are forgotten (its `.json` files are still checked)."""
        with self._lock:
            for state in self._folders.values():
                state.open.clear()

    def reset(self) -> None:
        """The observers were replaced (a reload): no folder is watched any more."""
        with self._lock:
            self._folders.clear()

    def record(self, folder: Path, rel: str, what: str, dest: str | None = None) -> None:
        """An event of the file `rel` (relative to `folder`): OPENED, CLOSED_WRITE, CLOSED, GONE; a
        rename inside the folder is GONE with `dest`, the file's new name, which stays open if it was."""
        now = self.clock()
        with self._lock:
            state = self._folders.get(folder)
            if state is None:
                return
            if what == OPENED:
                state.open.add(rel)
                return
            was_open = rel in state.open
            state.open.discard(rel)
            if what == CLOSED_WRITE:
                state.last_write = now
            elif what == GONE and dest is not None and was_open:
                state.open.add(dest)

    def activity(self, folder: Path) -> Activity | None:
        """What is known about `folder`'s files, or None when it is not recorded (not watched)."""
        with self._lock:
            state = self._folders.get(folder)
            if state is None:
                return None
            return Activity(tuple(sorted(state.open)), state.last_write)
