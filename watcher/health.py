"""What the daemon reports about itself: the status dict (control socket, metrics), /healthz,
systemd's STATUS= line and whether it may ping systemd's watchdog.

`Health` reads the service's parts and changes nothing; the service owns them and asks.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher.config import Config
from watcher.detectors import Detectors
from watcher.queue import WorkQueue
from watcher.retry import ApiGate
from watcher.worker import FolderProcessor

# A worker that moved no bytes and saw no request finish for this long is wedged: stop pinging
# systemd's watchdog so that it restarts us. Longer than a read timeout plus a capped Retry-After.
STALL_SECONDS = 180.0


class Health:
    def __init__(self, *, config: Callable[[], Config], queue: WorkQueue, gate: ApiGate,
                 processor: FolderProcessor, detectors: Detectors, watching: bool,
                 workers: Callable[[], list[threading.Thread]], state: Callable[[], str],
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.queue = queue
        self.gate = gate
        self.processor = processor
        self.detectors = detectors
        self.watching = watching
        self.workers = workers
        self.state = state
        self.clock = clock
        self.started_at = clock()
        self.progress_at = time.monotonic()
        self.recent_failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)

    def progressed(self) -> None:
        """Bytes moved, a request finished or a folder was done: the workers are not wedged."""
        self.progress_at = time.monotonic()

    def workers_alive(self) -> bool:
        return all(t.is_alive() for t in self.workers())

    def status(self) -> dict[str, Any]:
        now = self.clock()
        pending = self.queue.snapshot()
        incomplete = dict(self.processor.incomplete_since)
        warn = self.config().metrics.incomplete_warn_seconds
        counters = self.processor.counters
        return {
            "state": self.state(),
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 3),
            "queue_depth": len(pending),
            "in_flight": sorted(str(p) for p in self.queue.in_flight()),
            "oldest_pending_age_seconds": _oldest_pending_age(pending, now),
            "paused": {scope: {"reason": p.reason, "message": p.message, "since": p.since}
                       for scope, p in self.gate.pauses().items()},
            "counters": {"tracked": counters.tracked, "failed": counters.failed, "retried": counters.retried},
            "recent_failures": list(self.recent_failures),
            "observer_alive": self.detectors.alive() if self.watching else None,
            "observer_wedged": sorted(self.detectors.wedged()) if self.watching else None,
            "observer_restarts": self.detectors.restarts,
            "workers_alive": sum(1 for t in self.workers() if t.is_alive()),
            "incomplete": len(incomplete),
            "incomplete_too_long": sum(1 for since in incomplete.values() if now - since > warn),
            "watched": [str(w.path) for w in self.config().watch],
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while observers run and answer, workers are alive and the API is not paused for too long."""
        reasons = []
        if self.watching and not self.detectors.alive():
            reasons.append("observer not running")
        wedged = self.detectors.wedged() if self.watching else {}
        if wedged:
            reasons.append(f"observer not answering for {round(max(wedged.values()))} s: {', '.join(sorted(wedged))}")
        if not self.workers_alive():
            reasons.append("a worker thread died")
        now = self.clock()
        for scope, pause in self.gate.pauses().items():
            if now - pause.since > self.config().metrics.unhealthy_pause_seconds:
                reasons.append(f"API paused ({pause.reason}) for {round(now - pause.since)} s: {scope}")
        return not reasons, {"reasons": reasons, "queue_depth": len(self.queue), "state": self.state()}

    def status_line(self) -> str:
        """systemd's STATUS= text."""
        c = self.processor.counters
        paused = ", API paused" if self.gate.is_paused() else ""
        return (f"queue {len(self.queue)}, in flight {len(self.queue.in_flight())}, tracked {c.tracked}, "
                f"failed {c.failed}{paused}")

    def watchdog_ok(self) -> tuple[bool, bool]:
        """(ok, stalled): WATCHDOG=1 only while observers run and answer heartbeats (at once when one stops
        answering: see Detectors.check_liveness) and workers are alive and not wedged."""
        stalled = bool(self.queue.in_flight()) and time.monotonic() - self.progress_at > STALL_SECONDS
        observers_ok = not self.watching or (self.detectors.alive() and not self.detectors.wedged())
        ok = not stalled and observers_ok and self.workers_alive()
        return ok, stalled


def _oldest_pending_age(pending: dict[Path, float], now: float) -> float | None:
    """Age of the oldest folder that is ready and waiting (by the folder's mtime); looks at 1,000 at most."""
    ready = [p for p, at in pending.items() if at <= now]
    ages = []
    for folder in ready[:1000]:
        try:
            ages.append(now - folder.stat().st_mtime)
        except OSError:
            continue
    return round(max(ages), 3) if ages else None
