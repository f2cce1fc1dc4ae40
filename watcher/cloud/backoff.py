"""Backoff schedules: bounded exponential delays with full jitter (the pause gate is `watcher.daemon.gate`)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """delay(n) for the n-th retry (1-based): uniform in [d/2, d] with d = min(maximum, initial * 2**(n-1))."""

    initial: float
    maximum: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = float(min(self.maximum, self.initial * (2.0 ** max(0, min(attempt - 1, 32)))))
        r: float = (rng or random).random()
        return base / 2 + base / 2 * r
