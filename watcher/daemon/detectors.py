"""All the observers of the daemon: one `detection.Detector` per observation mode, and their liveness.

Local watched paths share one inotify observer; watched paths marked `polling: true` (NFS, SMB) get a
polling observer per interval. The main loop starts, stops, restarts and reconfigures them, checks
their heartbeats (`check_liveness`, see `watcher.daemon.detection`) and the watched paths that come and
go (`check_paths`, see `watcher.daemon.roots`); workers ask for and drop folder watches (a run folder's,
and in settle mode its input/ and output/ directories'; the open files of a watched folder are recorded
in `watcher.daemon.openfiles.OpenFiles`). This is the one place that logs `watched_path_missing` (once
per absence) and `watched_path_restored`. The
lock rule of `watcher.daemon.detection` holds here too: `_lock` guards only the list of detectors and the
root-to-detector map, and is never held while calling a detector or an observer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from watchdog.observers import Observer

from watcher.config import WatchConfig
from watcher.daemon import detection
from watcher.daemon.observers import ObserverFactory, polling_factory
from watcher.daemon.openfiles import OpenFiles

log = structlog.get_logger("watcher.daemon.detection")
# A heartbeat is answered within milliseconds; one older than this means the dispatcher may be stuck.
PATHS_WAIT_SECONDS = 2.0


class Detectors:
    """One Detector per observation mode: inotify for local paths, a polling observer per interval for
    watched paths marked `polling: true` (NFS, SMB). Incomplete folders are watched only under inotify;
    under polling they are re-checked by the queue.

    Workers call watch_folder/unwatch_folder; everything else is for the main loop, except the read-only
    alive/wedged/polling, which anyone may call. `clock` (monotonic seconds) times the heartbeats."""

    def __init__(self, watches: Sequence[WatchConfig], enqueue: Callable[[Path], None], *,
                 observer_factory: ObserverFactory | None = None,
                 on_overflow: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, open_files: OpenFiles | None = None) -> None:
        self.enqueue = enqueue
        self.open_files = open_files if open_files is not None else OpenFiles()
        self.observer_factory = observer_factory
        self.on_overflow = on_overflow
        self.clock = clock
        self.restarts = 0
        self._lock = threading.Lock()
        self._by_root: dict[Path, detection.Detector] = {}
        self._detectors: list[detection.Detector] = []
        self._reported: set[detection.Detector] = set()   # wedged observers already logged (main loop only)
        self._absent: set[Path] = set()   # watched paths logged as missing and not back yet (main loop only)
        self._build(watches)

    def _build(self, watches: Sequence[WatchConfig]) -> None:
        groups: dict[tuple[bool, float], list[Path]] = {}
        for w in watches:
            key = (w.polling, w.poll_interval_seconds if w.polling else 0.0)
            groups.setdefault(key, []).append(w.path)
        detectors: list[detection.Detector] = []
        by_root: dict[Path, detection.Detector] = {}
        for (polling, interval), roots in groups.items():
            factory = polling_factory(interval) if polling else (self.observer_factory or Observer)
            d = detection.Detector(roots, self.enqueue, observer_factory=factory, on_overflow=self._overflowed,
                                   on_file=self.open_files.record)
            d.polling = polling
            detectors.append(d)
            by_root.update(dict.fromkeys(roots, d))
        with self._lock:
            self._detectors, self._by_root = detectors, by_root
        self._reported.clear()   # reconfigure() stopped the detectors reported before
        self._absent &= set(by_root)   # a path still missing after a reload is not logged again

    def _overflowed(self) -> None:
        """The kernel's event queue overflowed (on watchdog's thread): a close may be among the lost events."""
        self.open_files.clear()
        if self.on_overflow is not None:
            self.on_overflow()

    def members(self) -> list[detection.Detector]:
        """The detectors now, one per observer."""
        with self._lock:
            return list(self._detectors)

    def start(self) -> None:
        for d in self.members():
            d.start()
        self._log_paths([])

    def stop(self) -> None:
        for d in self.members():
            d.stop()

    def alive(self) -> bool:
        return all(d.alive() for d in self.members())

    def restart(self) -> None:
        """Restart every dead observer; one that cannot be restarted falls back to polling."""
        for d in self.members():
            if d.alive():
                continue
            self.restarts += 1
            self.open_files.clear()   # events may have been lost with it
            try:
                d.restart()
            except OSError as exc:
                log.error("observer_restart_failed", error=str(exc), action="polling instead")
                d.use_polling(detection.POLL_FALLBACK_SECONDS)
                d.restart()

    def check_paths(self) -> list[Path]:
        """Called by the main loop on every tick: watch again the watched paths that are back (or are
        another directory now), stop watching those that went away, and log each change once. Returns
        the paths watched anew, for the caller to scan. An observer whose heartbeat has waited longer than
        PATHS_WAIT_SECONDS is skipped: its dispatcher may hold the lock that a watch change needs, and the
        main loop must not wait on it (check_liveness reports it; its paths are checked once it answers)."""
        now = self.clock()
        fresh = [root for d in self.members() if d.unanswered_for(now) <= PATHS_WAIT_SECONDS
                 for root in d.check_roots()]
        self._log_paths(fresh)
        return fresh

    def _log_paths(self, fresh: list[Path]) -> None:
        missing = self.missing()
        for path in sorted(set(missing) - self._absent):
            self._absent.add(path)
            log.error("watched_path_missing", path=str(path), problem=missing[path],
                      hint="no folder there is tracked until a directory is back at this path; it is watched "
                           "again within seconds (under systemd, list its parent in ReadWritePaths=)")
        # Watched anew, or back in a new observer (a restart, a reload) without a check seeing it.
        for path in sorted((self._absent - set(missing)) | set(fresh)):
            replaced = path not in self._absent   # deleted and recreated between two checks
            self._absent.discard(path)
            log.info("watched_path_restored", path=str(path), replaced=replaced, action="watching and scanning it")

    def missing(self) -> dict[Path, str]:
        """The watched paths that are not watched now (missing, not a directory, a symlink), and why."""
        return {path: why for d in self.members() for path, why in d.missing().items()}

    def reconfigure(self, watches: Sequence[WatchConfig]) -> None:
        """Replace the observers for a new set of watched paths (after a reload)."""
        self.stop()
        self.open_files.reset()
        self._build(watches)
        self.start()   # logs the paths that are missing and were not already

    def check_liveness(self) -> None:
        """Called by the main loop on every tick: send each observer a heartbeat (when the last one was
        answered), and log `observer_wedged` once when one has waited detection.WEDGED_SECONDS (`observer_answering`
        if it is answered after all). A wedged observer is not restarted: stopping it needs the lock its
        dispatcher holds. Health withholds the watchdog ping instead, so systemd restarts the daemon."""
        now = self.clock()
        for d in self.members():
            waited = d.unanswered_for(now)
            if waited >= detection.WEDGED_SECONDS and d not in self._reported:
                self._reported.add(d)
                log.error("observer_wedged", watched=d.root_strings, seconds=round(waited, 1),
                          hint="its dispatcher stopped delivering events, so no folder is detected there; "
                               "the systemd watchdog ping is withheld so that systemd restarts the daemon")
            elif waited < detection.WEDGED_SECONDS and d in self._reported:
                self._reported.discard(d)
                log.info("observer_answering", watched=d.root_strings)
            d.beat(now)

    def wedged(self) -> dict[str, float]:
        """Watched paths whose observer has left a heartbeat unanswered for detection.WEDGED_SECONDS or more, with
        the seconds it has waited. Read-only."""
        now = self.clock()
        out: dict[str, float] = {}
        for d in self.members():
            waited = d.unanswered_for(now)
            if waited >= detection.WEDGED_SECONDS:
                out.update(dict.fromkeys(d.root_strings, round(waited, 1)))
        return out

    def watch_folder(self, path: Path) -> bool:
        """Watch a run folder (its open files recorded from now on), or a directory right inside one (its
        input/ or output/ directory). False when it is not watched (polling, the watch limit, gone)."""
        with self._lock:
            d = self._by_root.get(path.parent)
            inside = d is None and path.parent.parent in self._by_root
            if inside:
                d = self._by_root[path.parent.parent]
        if d is None or d.polling:
            return False
        if inside:
            return d.watch_folder(path)
        self.open_files.start(path)   # first: an open right after the watch is made must be recorded
        watched = d.watch_folder(path)
        if not watched:
            self.open_files.stop(path)
        return watched

    def unwatch_folder(self, path: Path) -> None:
        """Drop the watch of a run folder and of the directories inside it (or of one such directory)."""
        with self._lock:
            d = self._by_root.get(path.parent)
            inside = d is None and path.parent.parent in self._by_root
            if inside:
                d = self._by_root[path.parent.parent]
        if d is None:
            return
        if not inside:
            for sub in d.watched_under(path):
                d.unwatch_folder(sub)
            self.open_files.stop(path)
        d.unwatch_folder(path)

    @property
    def polling(self) -> bool:
        return any(d.polling for d in self.members())
