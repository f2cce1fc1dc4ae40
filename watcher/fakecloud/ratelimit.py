"""A token bucket over the emulated API calls (`Behaviour.rate_limit_per_second`, `rate_limit_burst`).

The bucket holds up to `burst` tokens, starts full and refills at `rate` per second; each call takes
one. A call that finds none is refused with the whole seconds until one is due (at least 1), for
the 429's `Retry-After`. A change of rate or burst starts a full bucket. `clock` is monotonic seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Thread-safe token bucket; the limits are passed with each call, so they are read when used."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: tuple[float, int] | None = None
        self._tokens = 0.0
        self._stamp = 0.0

    def take(self, rate: float, burst: int) -> int | None:
        """Take a token: None when the call may go on, else the seconds to wait (>= 1)."""
        with self._lock:
            now = self._clock()
            if self._limits != (rate, burst):
                self._limits, self._tokens, self._stamp = (rate, burst), float(burst), now
            self._tokens = min(float(burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - self._tokens) / rate))
