"""What the daemon reports about itself: the status dict (control socket, metrics), /healthz,
systemd's STATUS= line and whether it may ping systemd's watchdog.

`Health` reads the service's parts and changes nothing; the service owns them and asks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from watcher.config import Config
from watcher.daemon.detectors import Detectors
from watcher.daemon.gate import Gate
from watcher.daemon.index import FolderIndex
from watcher.daemon.outcomes import Outcomes

# A worker that moved no bytes and saw no request finish for this long is wedged: stop pinging
# systemd's watchdog so that it restarts us. Longer than a read timeout plus a capped Retry-After.
STALL_SECONDS = 180.0
LISTED_FOLDERS = 20   # folders named in the status per list (the count says how many there are)


class Health:
    def __init__(self, *, config: Callable[[], Config], index: FolderIndex, gate: Gate, outcomes: Outcomes,
                 detectors: Detectors, watching: bool, workers: Callable[[], list[threading.Thread]],
                 state: Callable[[], str], clock: Callable[[], float],
                 concurrency: Callable[[], dict[str, Any]] | None = None,
                 pacing: Callable[[], float | None] | None = None) -> None:
        self.config = config
        self.index = index
        self.gate = gate
        self.outcomes = outcomes
        self.detectors = detectors
        self.watching = watching
        self.workers = workers
        self.state = state
        self.clock = clock
        self.concurrency = concurrency   # the limit's snapshot (`Concurrency.snapshot`)
        self.pacing = pacing             # API calls per second allowed now, None when unlimited (`Pacing.rate`)
        self.started_at = clock()
        self.progress_at = time.monotonic()

    def progressed(self) -> None:
        """Bytes moved, a request finished or a folder was done: the workers are not wedged."""
        self.progress_at = time.monotonic()

    def workers_alive(self) -> bool:
        return all(t.is_alive() for t in self.workers())

    def status(self) -> dict[str, Any]:
        """The daemon's state as `status --json` shows it (and the metrics' gauges read it)."""
        now = self.clock()
        config = self.config()
        folders = self.index.counts()
        oldest = self.index.oldest_pending_since()
        incomplete = self.index.incomplete()
        warn = config.metrics.incomplete_warn_seconds
        inconclusive = self.index.waiting_for("lookup_inconclusive")
        state_errors = self.index.waiting_with("state_error")
        newer = self.index.left_alone()
        return {
            "state": self.state(),
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 3),
            "folders": folders,
            "queue_depth": folders["queued"],
            "in_flight": sorted(str(p) for p in self.index.in_flight()),
            # Among retry_wait: folders whose run look-up could not see the whole list (never re-posted).
            "lookup_inconclusive": {"count": len(inconclusive),
                                    "folders": [str(p) for p in inconclusive[:LISTED_FOLDERS]]},
            # Among retry_wait: folders whose claim, marker, journal or spool file could not be written.
            "state_error": {"count": len(state_errors),
                            "folders": [{"folder": str(p), "error": e} for p, e in state_errors[:LISTED_FOLDERS]]},
            # Finished for this version: a newer nextmv-watcher wrote their marker or journal.
            "newer": {"count": len(newer),
                      "folders": [{"folder": str(p), "problem": e} for p, e in newer[:LISTED_FOLDERS]]},
            "oldest_pending_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
            "paused": {scope: {"reason": p.reason, "message": p.message, "since": p.since}
                       for scope, p in self.gate.pauses().items()},
            # Folders that may be in flight now (mode, limit, workers, in_flight); a 429's hold, in seconds.
            "concurrency": self.concurrency() if self.concurrency is not None else None,
            "api_held_seconds": round(self.gate.held_for(), 3),
            # API calls per second the daemon allows itself after 429s (`pacing`); None: not paced.
            "api_rate_limit": self._rate(),
            "counters": self.outcomes.totals(),
            "recent_failures": self.outcomes.recent_failures(),
            "observer_alive": self.detectors.alive() if self.watching else None,
            "observer_wedged": sorted(self.detectors.wedged()) if self.watching else None,
            "observer_restarts": self.detectors.restarts,
            "workers_alive": sum(1 for t in self.workers() if t.is_alive()),
            "incomplete": len(incomplete),
            "incomplete_too_long": sum(1 for since in incomplete.values() if now - since > warn),
            "watched": [str(w.path) for w in config.watch],
            # Watched paths not watched now (gone, not a directory, a symlink), and why.
            "watched_missing": self._missing() if self.watching else None,
        }

    def _rate(self) -> float | None:
        rate = self.pacing() if self.pacing is not None else None
        return None if rate is None else round(rate, 2)

    def _missing(self) -> dict[str, str]:
        return {str(path): why for path, why in sorted(self.detectors.missing().items())}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while observers run and answer, every watched path is watched, workers are alive and the
        API is not paused for too long."""
        reasons = []
        if self.watching and not self.detectors.alive():
            reasons.append("observer not running")
        wedged = self.detectors.wedged() if self.watching else {}
        if wedged:
            reasons.append(f"observer not answering for {round(max(wedged.values()))} s: {', '.join(sorted(wedged))}")
        if self.watching:
            reasons.extend(f"watched path {path} {why}" for path, why in self._missing().items())
        if not self.workers_alive():
            reasons.append("a worker thread died")
        now = self.clock()
        for scope, pause in self.gate.pauses().items():
            if now - pause.since > self.config().metrics.unhealthy_pause_seconds:
                reasons.append(f"API paused ({pause.reason}) for {round(now - pause.since)} s: {scope}")
        return not reasons, {"reasons": reasons, "queue_depth": self.index.counts()["queued"], "state": self.state()}

    def status_line(self) -> str:
        """systemd's STATUS= text."""
        f = self.index.counts()
        c = self.outcomes.totals()
        paused = f", {f['parked']} parked (API paused)" if self.gate.is_paused() else ""
        missing = self._missing() if self.watching else {}
        gone = f", watched path missing: {', '.join(missing)}" if missing else ""
        return (f"queue {f['queued']}, in flight {f['in_flight']}, waiting {f['retry_wait']}, "
                f"tracked {c['tracked']}, failed {c['failed']}{paused}{gone}")

    def watchdog_ok(self) -> tuple[bool, bool]:
        """(ok, stalled): WATCHDOG=1 only while observers run and answer heartbeats (at once when one stops
        answering: see Detectors.check_liveness) and workers are alive and not wedged. A missing watched path
        does not withhold it: a restart would not bring the path back (/healthz reports it)."""
        stalled = bool(self.index.in_flight()) and time.monotonic() - self.progress_at > STALL_SECONDS
        observers_ok = not self.watching or (self.detectors.alive() and not self.detectors.wedged())
        ok = not stalled and observers_ok and self.workers_alive()
        return ok, stalled
