"""The main loop's periodic chores, each on its own timer.

    probes of paused scopes (the gate), parked folders whose pause ended   every tick
    dead or wedged observers (restart, rescan; heartbeats)                   every tick
    watched paths gone or back (one lstat each; a path back is scanned)      every tick
    reconcile (a full one every 12th, and on request: `rescan`)              reconcile_seconds
    systemd STATUS= and WATCHDOG=1 (only while healthy)                      5 s, half the watchdog interval
    incomplete-too-long warnings                                             30 s
    retention of tracked folders                                             an hour
    the supervisor gone (one of `processes`: drain and exit, not orphaned)   every tick

`tick()` runs whatever is due, on the main loop's thread; `next_wait()` says how long that thread may
sleep (about a second at most when idle). `rescan()` may be called from any thread (an observer's
overflow, the control socket): it only sets flags. Timers read the current configuration each time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import structlog

from watcher.config import Config
from watcher.daemon import aftercare
from watcher.daemon.detectors import Detectors
from watcher.daemon.gate import Gate
from watcher.daemon.health import Health
from watcher.daemon.index import FolderIndex
from watcher.daemon.notify import Notifier
from watcher.daemon.scanning import reconcile
from watcher.runfolder.markers import StateStore

log = structlog.get_logger("watcher.daemon.service")

FULL_RECONCILE_EVERY = 12     # every Nth reconciliation also re-reads the markers of finished folders
STATUS_EVERY_SECONDS = 5.0    # STATUS= lines to systemd
HOUSEKEEPING_SECONDS = 30.0   # incomplete-too-long warnings
UNPARK_EVERY_SECONDS = 5.0    # folders parked behind a pause that ended without unparking them (a race, a reload)
RETENTION_EVERY_SECONDS = 3600.0


class Chores:
    def __init__(self, *, config: Callable[[], Config], clock: Callable[[], float], index: FolderIndex,
                 store: StateStore, gate: Gate, detectors: Detectors, health: Health, notifier: Notifier,
                 watching: bool, stopping: threading.Event, supervisor: int | None = None,
                 on_orphaned: Callable[[], None] = lambda: None) -> None:
        """`supervisor`: its pid, when this daemon is one of its processes; `on_orphaned` is called once
        when it is gone (this process's parent is another)."""
        self.config = config
        self.clock = clock
        self.index = index
        self.store = store
        self.gate = gate
        self.detectors = detectors
        self.health = health
        self.notifier = notifier
        self.watching = watching
        self.stopping = stopping
        self.supervisor = supervisor
        self.on_orphaned = on_orphaned
        self._orphaned = False
        self._rescan_now = threading.Event()
        self._rescan_reason = ""
        self._rescan_lost = False
        self._full_rescan = False
        self._reconciles = 0
        now = clock()
        self._next = {"reconcile": now + config().reconcile_seconds, "status": 0.0, "watchdog": 0.0, "unpark": 0.0,
                      "housekeeping": now + HOUSEKEEPING_SECONDS, "retention": now + 60.0}

    def rescan(self, reason: str, *, full: bool = False, lost: bool = False) -> None:
        """Ask for a reconcile at the next tick (`full`: re-read the markers of finished folders too;
        `lost`: events were lost, logged as a warning; an asked-for rescan is info). Safe from any thread."""
        self._rescan_reason = reason
        self._rescan_lost = self._rescan_lost or lost
        self._full_rescan = self._full_rescan or full
        self._rescan_now.set()

    def next_wait(self) -> float:
        """Seconds until the next timer that is in use: an idle daemon wakes about once a second."""
        config = self.config()
        active = ["reconcile", "housekeeping"]
        if self.notifier.enabled:
            active.append("status")
        if self.notifier.watchdog_interval:
            active.append("watchdog")
        if self.watching and config.retention_days:
            active.append("retention")
        times = [self._next[name] for name in active]
        probe = self.gate.next_probe_at()
        if probe is not None:
            times.append(probe)
        return max(0.01, min(1.0, min(times) - self.clock()))

    def _due(self, name: str, every: float) -> bool:
        now = self.clock()
        if now < self._next[name]:
            return False
        self._next[name] = now + every
        return True

    def tick(self) -> None:
        config = self.config()
        if self._supervisor_gone():
            return
        self.gate.probe()
        if self._due("unpark", UNPARK_EVERY_SECONDS):   # a scan of the index's live folders: not each tick
            for scope in self.index.parked_scopes() - set(self.gate.pauses()):
                self.index.unpark(scope)   # parked just as its pause ended (or a reload dropped it)
        self._check_observer()
        if self._rescan_now.is_set():
            self._rescan_now.clear()
            (log.warning if self._rescan_lost else log.info)("rescanning", reason=self._rescan_reason)
            self._rescan_lost = False
            self._reconcile()
        elif self._due("reconcile", config.reconcile_seconds):
            self._reconcile()
        if self.notifier.enabled and self._due("status", STATUS_EVERY_SECONDS):   # it counts the live folders
            self.notifier.status(self.health.status_line())
        if self.notifier.watchdog_interval and self._due("watchdog", self.notifier.watchdog_interval / 2):
            self._watchdog()
        if self._due("housekeeping", HOUSEKEEPING_SECONDS):
            self._warn_incomplete(config)
        if self.watching and config.retention_days and self._due("retention", RETENTION_EVERY_SECONDS):
            removed = aftercare.sweep_retention(config, self.clock())
            if removed:
                log.info("retention_swept", folders=removed, days=config.retention_days)

    def _supervisor_gone(self) -> bool:
        """A process whose supervisor is gone (killed outside systemd, which would have stopped the whole
        unit) drains and exits as on SIGTERM, instead of working on unseen by status, metrics and health."""
        if self.supervisor is None or os.getppid() == self.supervisor:
            return False
        if not self._orphaned:
            self._orphaned = True
            log.error("supervisor_gone", supervisor_pid=self.supervisor, action="draining and exiting",
                      hint="start nextmv-watcher again")
            self.on_orphaned()
        return True

    def _watchdog(self) -> None:
        ok, stalled = self.health.watchdog_ok()
        if ok:
            self.notifier.watchdog()
        else:
            log.error("watchdog_withheld", stalled=stalled, observer_alive=self.detectors.alive(),
                      observer_wedged=sorted(self.detectors.wedged()))

    def _warn_incomplete(self, config: Config) -> None:
        for folder, since in self.index.incomplete_too_long(config.metrics.incomplete_warn_seconds):
            entry = self.index.entry(folder)
            log.warning("folder_incomplete_too_long", folder=str(folder), seconds=round(self.clock() - since),
                        reason=entry.reason if entry is not None else None,
                        hint="its producer never finished it (no marker, no input/output, a file still open "
                             "or not complete JSON); `nextmv-watcher track FOLDER` tracks it as it is")

    def _check_observer(self) -> None:
        """A dead observer is replaced and the watched paths rescanned, so no folder is missed. Every
        observer gets a heartbeat; one that stops answering is reported (and Health withholds the ping)."""
        if not self.watching or self.stopping.is_set():
            return
        if not self.detectors.alive():
            log.error("observer_died", restarts=self.detectors.restarts + 1, action="restarting it and rescanning")
            self.detectors.restart()
            self.rescan("observer restarted", lost=True)
        self.detectors.check_liveness()
        if self.detectors.check_paths() and not self._rescan_now.is_set():
            self._reconcile()   # a watched path is back: its folders are offered now, not at the next reconcile

    def _reconcile(self) -> None:
        """Offer folders the observer may have missed; finished ones (same name, same inode) are skipped."""
        self._reconciles += 1
        full = self._reconciles % FULL_RECONCILE_EVERY == 0 or self._full_rescan
        self._full_rescan = False
        queued = reconcile(self.config(), self.store, self.index, full=full)
        if queued:
            log.info("reconcile_queued", folders=queued, full=full)
