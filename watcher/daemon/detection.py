"""The thin watchdog adapter: filesystem events become `enqueue(run_folder)` calls, nothing more.

What is watched, so that 100,000 finished folders cost nothing: each watched path itself
(non-recursively: a new or renamed-in run folder shows up there), and each run folder that
is not complete yet (non-recursively: the marker, the input and output appear at its root).
Finished folders are unwatched. Beyond `max_folder_watches`, incomplete folders are left to
the caller's periodic re-check instead (`watch_folder` returns False).

The handler runs on watchdog's single dispatcher thread, so it only maps a path to its run
folder and enqueues it; all I/O happens in the workers. File opens and closes (and deletions and
renames) also go to `on_file` (`watcher.daemon.openfiles.OpenFiles.record`): settle mode does not take
a folder with a file open for a finished one. An open, or a close after reading, enqueues nothing:
the daemon's own reads would wake the folder up again.

Locks. The codebase's rule is that a lock is never held while calling into another component,
and here it matters most: watchdog's dispatcher holds its observer's lock while it calls our
handler, and the observer's `schedule`, `unschedule` and `stop` take that same lock. So:
- A Detector's `_lock` guards only the Detector's own fields. It is never held across a call to
  the observer (or anything else): a caller takes what it needs under the lock, calls the
  observer without it, and publishes the result under it again.
- The handler takes only that lock (briefly: `mark_stale`, heartbeats) and calls `enqueue`,
  whose queue lock is likewise never held across a call into us. It never waits on a caller.
- Per folder, one caller at a time changes its watch outside the lock (the folder is "busy");
  meanwhile another `watch_folder` returns False (the folder is then re-checked by polling) and
  another `unwatch_folder` is left to the busy caller, which undoes its watch when it is done.
  Workers never overlap on one folder (the queue hands a folder to one worker at a time), so
  this is about the main loop's `stop`/`restart` and about staying correct if that changes.
`watcher.daemon.detectors.Detectors` (all the observers) follows the same rule.

Watched paths come and go: the watches on the roots themselves are a `RootWatches` per observer
(`watcher.daemon.roots`), checked by the main loop on every tick (`check_roots`); a root that is missing
at start does not keep the others from being watched.

Liveness. On every tick the main loop sends each observer a heartbeat through its event queue
(`Detectors.check_liveness` in `watcher.daemon.detectors`), which the dispatcher hands to our handler like any
event. One left unanswered for WEDGED_SECONDS means the dispatcher is stuck and no event reaches us: it is logged
once (`observer_wedged`), `wedged()` reports it, and Health withholds systemd's watchdog ping.
Such an observer cannot be stopped (`stop()` needs the lock its dispatcher holds): stopping gives
up after `stop_seconds`, so a SIGTERM still ends the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from watcher.daemon.observers import ObserverFactory, OverflowSignal, polling_factory, stop_observer, unschedule
from watcher.daemon.openfiles import CLOSED, CLOSED_WRITE, GONE, OPENED
from watcher.daemon.roots import RootWatches
from watcher.runfolder.markers import PREFIX

log = structlog.get_logger("watcher.daemon.detection")

# Events that can make a folder appear, complete or vanish, and the opens and closes that tell a file
# is being written (QUIET: recorded, never enqueued: our own reads of a folder would wake it up again).
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileClosedEvent,
    FileDeletedEvent, DirDeletedEvent, FileOpenedEvent, FileClosedNoWriteEvent,
]
QUIET = (FileOpenedEvent, FileClosedNoWriteEvent)
# A root's watch: folders appearing, renamed in or out, or deleted. Not opens and closes: in a root they
# are the run folders' (directories', which watchdog drops anyway) opened by the daemon itself, about
# ten per folder tracked, each a wake-up of the observer's two threads for nothing.
ROOT_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileDeletedEvent, DirDeletedEvent,
]
_FILE_EVENTS = {FileOpenedEvent: OPENED, FileClosedEvent: CLOSED_WRITE, FileClosedNoWriteEvent: CLOSED,
                FileDeletedEvent: GONE, FileMovedEvent: GONE}
FileCallback = Callable[[Path, str, str, str | None], None]   # (run folder, relative path, what, renamed to)


def run_folder_of(path: str, roots: list[str]) -> Path | None:
    """The run folder (direct child of a root) that `path` lies in, or None for paths to ignore:
    dot-folders, the daemon's own `.nextmv-*` files, and anything outside the roots."""
    for root in roots:
        if not path.startswith(root + os.sep):
            continue
        parts = path[len(root) + 1:].split(os.sep)
        if not parts[0] or parts[0].startswith("."):
            return None
        if len(parts) >= 2 and parts[1].startswith(PREFIX):
            return None
        return Path(root, parts[0])
    return None


class HeartbeatEvent(FileSystemEvent):
    """Posted by `Detector.beat` straight into the observer's event queue; the path is unique per beat
    (watchdog's queue drops an item equal to the last one put) and names no file. It travels with a
    watch of its own, with a handler and no emitter, so heartbeats flow while every root is missing."""

    event_type = "heartbeat"


class _Handler(FileSystemEventHandler):
    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, HeartbeatEvent):
            self.detector.answered(event)
            return
        roots = self.detector.root_strings
        if event.is_directory and event.event_type in ("deleted", "moved"):
            gone = run_folder_of(os.fsdecode(event.src_path), roots)
            if gone is not None:   # a watched run folder, or its watched input/ or output/ directory
                self.detector.mark_stale(Path(os.fsdecode(event.src_path)))   # its inotify watch died with it
        what = _FILE_EVENTS.get(type(event))
        if what is not None:
            self.detector.file_event(os.fsdecode(event.src_path), what, os.fsdecode(getattr(event, "dest_path", "")))
            if isinstance(event, QUIET):
                return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = os.fsdecode(raw)
            folder = run_folder_of(path, roots)
            if folder is not None:
                self.detector.enqueue(folder)


INOTIFY_LIMITS = {
    errno.ENOSPC: "inotify watch limit reached: raise it with `sysctl fs.inotify.max_user_watches=524288`",
    errno.EMFILE: "inotify instance limit reached: raise it with `sysctl fs.inotify.max_user_instances=1024`",
}
POLL_FALLBACK_SECONDS = 2.0
# A heartbeat unanswered this long means the observer's dispatcher is stuck: no event reaches us. Far
# longer than the dispatcher needs for a backlog of many thousand events (our handler only enqueues).
WEDGED_SECONDS = 15.0
STOP_SECONDS = 5.0


class Detector:
    """Owns one observer and its watches.

    Workers call watch_folder/unwatch_folder from any thread; watchdog's dispatcher calls mark_stale and
    answered; the main loop alone calls start/stop/restart/use_polling/beat. See the module docstring
    for the lock rule."""

    def __init__(self, roots: list[Path], enqueue: Callable[[Path], None], *,
                 observer_factory: ObserverFactory = Observer, max_folder_watches: int = 1024,
                 on_overflow: Callable[[], None] | None = None, stop_seconds: float = STOP_SECONDS,
                 on_file: FileCallback | None = None) -> None:
        self.roots = list(roots)
        self.on_file = on_file
        self.root_strings = [os.fspath(r) for r in self.roots]
        self.enqueue = enqueue
        self.observer_factory = observer_factory
        self.max_folder_watches = max_folder_watches
        self.stop_seconds = stop_seconds
        self._handler = _Handler(self)
        self.polling = False
        self._overflow = OverflowSignal(on_overflow) if on_overflow is not None else None
        self._lock = threading.Lock()
        # Guarded by _lock, and nothing else is:
        self._observer: BaseObserver | None = None
        self._roots: RootWatches | None = None   # the watches on the roots, of _observer
        self._folder_watches: dict[Path, tuple[ObservedWatch, int]] = {}   # on _observer, with the inode
        self._stale: set[Path] = set()       # watched folders deleted or renamed away since
        self._busy: set[Path] = set()        # folders whose watch a caller is changing outside the lock
        self._unwanted: set[Path] = set()    # busy folders unwatched meanwhile
        self._beats = 0
        self._beat: tuple[str, float] | None = None   # the heartbeat on its way: its path, when it was sent
        self._beat_watch = ObservedWatch(f"<heartbeats {id(self):x}>", recursive=False)

    def start(self) -> None:
        """Start the observer with a watch on every root that is a directory (the others are missing until
        `check_roots` finds one there). When inotify's limits are hit, log which sysctl to raise and fall
        back to polling. Raises OSError when a root that is there cannot be watched at all."""
        if self._overflow is not None:
            for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
                logging.getLogger(name).addHandler(self._overflow)
        try:
            self._start()
        except OSError as exc:
            hint = INOTIFY_LIMITS.get(exc.errno or 0)
            if hint is None or self.polling:
                raise
            log.error("inotify_limit", error=exc.strerror or str(exc), hint=hint,
                      fallback=f"polling every {POLL_FALLBACK_SECONDS} s")
            self.use_polling(POLL_FALLBACK_SECONDS)
            self._start()

    def use_polling(self, interval: float) -> None:
        self.observer_factory = polling_factory(interval)
        self.polling = True

    def _start(self) -> None:
        """Build and start a new observer watching every root that is a directory now, then publish it (it
        is nobody else's until then). Raises OSError when a root that is there cannot be watched."""
        observer = self.observer_factory()
        roots = RootWatches(observer, self._handler, self.roots, ROOT_EVENTS)
        try:
            observer.add_handler_for_watch(self._handler, self._beat_watch)
            roots.start()
            observer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                observer.stop()
            raise
        old = self._swap(observer, roots)
        if old is not None:
            stop_observer(old, self.stop_seconds)

    def _swap(self, observer: BaseObserver | None, roots: RootWatches | None) -> BaseObserver | None:
        """Make `observer` the current one (its folder watches start empty); return the previous one."""
        with self._lock:
            old, self._observer, self._roots = self._observer, observer, roots
            self._folder_watches.clear()
            self._stale.clear()
            self._beat = None
        return old

    def restart(self) -> None:
        """Replace a dead observer with a new one (folder watches are dropped; the caller rescans)."""
        old = self._swap(None, None)
        if old is not None:
            stop_observer(old, self.stop_seconds)
        self._start()

    def check_roots(self) -> list[Path]:
        """Main loop, every tick: watch the roots that came back or were replaced; drop the watches of those
        that went away. Returns the roots watched anew (see `RootWatches.check`)."""
        with self._lock:
            roots = self._roots
        return roots.check() if roots is not None else []

    def missing(self) -> dict[Path, str]:
        """The roots that are not watched now, and why; none while no observer runs."""
        with self._lock:
            roots = self._roots
        return roots.missing() if roots is not None else {}

    def alive(self) -> bool:
        with self._lock:
            observer = self._observer
        return observer is not None and observer.is_alive()

    def watch_folder(self, folder: Path) -> bool:
        """Watch an incomplete folder's root. True when it is watched; False when it cannot be (the limit,
        an error, no observer, another caller changing its watch right now): poll it instead."""
        try:
            inode = os.stat(folder).st_ino
        except OSError:
            return False
        with self._lock:
            observer = self._observer
            if observer is None or folder in self._busy:
                return False
            known = self._folder_watches.get(folder)
            if known is not None and known[1] == inode and folder not in self._stale:
                return True
            # Not watched yet, or replaced under the same name: the old watch died with the old directory.
            self._stale.discard(folder)
            if known is not None:
                del self._folder_watches[folder]
            room = len(self._folder_watches) + len(self._busy) < self.max_folder_watches
            if known is None and not room:
                return False
            self._busy.add(folder)
        try:
            if known is not None:   # first: a watch on the same path would share the old one's emitter
                unschedule(observer, known[0])
            if not room:
                return False
            try:
                watch = observer.schedule(self._handler, os.fspath(folder), recursive=False, event_filter=EVENTS)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):   # not merely gone since the stat above
                    log.warning("folder_watch_failed", folder=str(folder), error=exc.strerror or str(exc))
                return False
            with self._lock:
                kept = self._observer is observer and folder not in self._unwanted
                if kept:
                    self._folder_watches[folder] = (watch, inode)
            if not kept:   # unwatched, stopped or restarted meanwhile
                unschedule(observer, watch)
            return kept
        finally:
            with self._lock:
                self._busy.discard(folder)
                self._unwanted.discard(folder)

    def file_event(self, path: str, what: str, dest: str) -> None:
        """A file was opened, closed, deleted or renamed: tell `on_file`, relative to its run folder.
        Called on watchdog's dispatcher thread."""
        folder = run_folder_of(path, self.root_strings) if self.on_file is not None else None
        if folder is None or self.on_file is None:
            return
        top = os.fspath(folder) + os.sep
        if not path.startswith(top):
            return   # the run folder entry itself (a plain file in the watched path)
        moved_to = dest[len(top):] if dest.startswith(top) else None
        self.on_file(folder, path[len(top):], what, moved_to)

    def watched_under(self, folder: Path) -> list[Path]:
        """The watched directories inside `folder` (its input/ and output/ directories)."""
        with self._lock:
            return [p for p in (*self._folder_watches, *self._busy) if folder in p.parents]

    def mark_stale(self, folder: Path) -> None:
        """The watched folder was deleted or renamed away: its watch must be made anew if asked again.
        Called on watchdog's dispatcher thread."""
        with self._lock:
            if folder in self._folder_watches or folder in self._busy:
                self._stale.add(folder)

    def unwatch_folder(self, folder: Path) -> None:
        with self._lock:
            self._stale.discard(folder)
            if folder in self._busy:
                self._unwanted.add(folder)   # the busy caller drops its watch when it is done
                return
            known = self._folder_watches.pop(folder, None)
            observer = self._observer
            if known is None or observer is None:
                return
            self._busy.add(folder)
        try:
            unschedule(observer, known[0])
        finally:
            with self._lock:
                self._busy.discard(folder)
                self._unwanted.discard(folder)
                self._stale.discard(folder)

    def folder_watch_count(self) -> int:
        with self._lock:
            return len(self._folder_watches)

    def beat(self, now: float) -> None:
        """Post a heartbeat through the observer's event queue, unless one is still on its way. The
        dispatcher hands it to our handler like any event, so an answer proves events get through."""
        with self._lock:
            observer, watch = self._observer, self._beat_watch
            if observer is None or self._beat is not None:
                return
            self._beats += 1
            path = f"<heartbeat {self._beats}>"
            self._beat = (path, now)
        observer.event_queue.put((HeartbeatEvent(path), watch))

    def answered(self, event: HeartbeatEvent) -> None:
        """The dispatcher delivered a heartbeat. Called on watchdog's dispatcher thread."""
        with self._lock:
            if self._beat is not None and self._beat[0] == event.src_path:
                self._beat = None

    def unanswered_for(self, now: float) -> float:
        """Seconds the heartbeat on its way has waited for the dispatcher; 0 when none is on its way."""
        with self._lock:
            beat = self._beat
        return max(0.0, now - beat[1]) if beat is not None else 0.0

    def stop(self) -> None:
        observer = self._swap(None, None)
        if observer is not None:
            stop_observer(observer, self.stop_seconds)
        if self._overflow is not None:
            for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
                logging.getLogger(name).removeHandler(self._overflow)
