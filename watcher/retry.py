"""Backoff schedules and the pause gate.

`Backoff` gives bounded exponential delays with full jitter. `ApiGate` decides whether work
may call the API right now: all work pauses together when the key is rejected or the API is
unreachable (a circuit breaker), one application's work pauses when it does not exist. Folders
that meet a closed gate are parked, not failed, and are released together when it opens.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Backoff:
    """delay(n) for the n-th retry (1-based): uniform in [d/2, d] with d = min(maximum, initial * 2**(n-1))."""

    initial: float
    maximum: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = float(min(self.maximum, self.initial * (2.0 ** max(0, min(attempt - 1, 32)))))
        r: float = (rng or random).random()
        return base / 2 + base / 2 * r


GLOBAL = "*"


@dataclass
class Pause:
    reason: str            # "auth" | "unreachable" | "application_not_found"
    message: str
    since: float
    probe_at: float
    probes: int = 0


class ApiGate:
    """Thread-safe. Workers ask `blocked(app)` before working; the service probes paused scopes
    (`due_probes`) and reports the outcome with `opened` or `still_closed`."""

    def __init__(self, clock: Callable[[], float], *, failure_threshold: int = 5,
                 probe_backoff: Backoff | None = None) -> None:
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.probe_backoff = probe_backoff or Backoff(1.0, 60.0)
        self._lock = threading.Lock()
        self._paused: dict[str, Pause] = {}
        self._parked: dict[str, set[Path]] = {}
        self._consecutive_failures = 0

    def blocked(self, application_id: str) -> Pause | None:
        with self._lock:
            return self._paused.get(GLOBAL) or self._paused.get(application_id)

    def is_paused(self) -> bool:
        with self._lock:
            return bool(self._paused)

    def pauses(self) -> dict[str, Pause]:
        with self._lock:
            return dict(self._paused)

    def park(self, application_id: str, folder: Path) -> bool:
        """Hold `folder` until its scope opens. False when the gate is open (the caller should go on)."""
        with self._lock:
            scope = GLOBAL if GLOBAL in self._paused else application_id
            if scope not in self._paused:
                return False
            self._parked.setdefault(scope, set()).add(folder)
            return True

    def close(self, scope: str, reason: str, message: str) -> bool:
        """Pause `scope` (GLOBAL or an application id). True when it was open before (log once)."""
        now = self.clock()
        with self._lock:
            if scope in self._paused:
                return False
            self._paused[scope] = Pause(reason, message, now, now + self.probe_backoff.delay(1))
            return True

    def record_success(self) -> None:
        with self._lock:
            self._consecutive_failures = 0

    def record_transient(self, message: str) -> bool:
        """Count a request that failed transiently; after `failure_threshold` in a row with no success
        in between, pause all work as unreachable. True when this call opened the breaker."""
        with self._lock:
            self._consecutive_failures += 1
            tripped = self._consecutive_failures >= self.failure_threshold
        return self.close(GLOBAL, "unreachable", message) if tripped else False

    def due_probes(self) -> list[tuple[str, Pause]]:
        now = self.clock()
        with self._lock:
            return [(scope, p) for scope, p in self._paused.items() if p.probe_at <= now]

    def next_probe_at(self) -> float | None:
        with self._lock:
            return min((p.probe_at for p in self._paused.values()), default=None)

    def still_closed(self, scope: str, reason: str, message: str) -> None:
        with self._lock:
            p = self._paused.get(scope)
            if p is None:
                return
            p.probes += 1
            p.reason, p.message = reason, message
            p.probe_at = self.clock() + self.probe_backoff.delay(p.probes + 1)

    def opened(self, scope: str) -> tuple[Pause | None, set[Path]]:
        """Open `scope`; returns its pause (None if it was open) and the folders parked behind it."""
        with self._lock:
            pause = self._paused.pop(scope, None)
            self._consecutive_failures = 0
            return pause, self._parked.pop(scope, set())
