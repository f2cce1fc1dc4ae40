"""The work queue: each folder at most once, handed out in order of the time it becomes ready.

A folder that is being worked on is never handed to a second worker; if it is put again
meanwhile (a new event arrived), it is queued again when its worker calls `done()`, so an
event is never lost. Time comes from an injected clock, so tests step it instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path


class WorkQueue:
    """Thread-safe; `get` blocks until an item is ready, `pop_ready` never blocks."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Path]] = []
        self._ready_at: dict[Path, float] = {}
        self._in_flight: set[Path] = set()
        self._again: dict[Path, float] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, key: Path, at: float | None = None) -> None:
        """Queue `key` to be ready at `at` (default now). A queued key keeps the earlier of its two times;
        a key in flight is queued again once its worker is done."""
        when = self._clock() if at is None else at
        with self._cond:
            if key in self._in_flight:
                self._again[key] = min(when, self._again.get(key, when))
                return
            current = self._ready_at.get(key)
            if current is not None and current <= when:
                return
            self._ready_at[key] = when
            heapq.heappush(self._heap, (when, next(self._seq), key))
            self._cond.notify()

    def _pop_ready_locked(self, now: float) -> Path | None:
        while self._heap:
            when, _, key = self._heap[0]
            if self._ready_at.get(key) != when:
                heapq.heappop(self._heap)  # superseded by an earlier put
                continue
            if when > now:
                return None
            heapq.heappop(self._heap)
            del self._ready_at[key]
            self._in_flight.add(key)
            return key
        return None

    def _next_time_locked(self) -> float | None:
        while self._heap and self._ready_at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_ready(self) -> Path | None:
        """A ready key (now marked in flight), or None at once."""
        with self._cond:
            return self._pop_ready_locked(self._clock())

    def get(self, timeout: float | None = None) -> Path | None:
        """Block until a key is ready (then it is in flight) or `timeout` passes or the queue is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                key = self._pop_ready_locked(self._clock())
                if key is not None:
                    return key
                nxt = self._next_time_locked()
                wait = None if nxt is None else max(0.0, nxt - self._clock())
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: Path, again_at: float | None = None, *, hold: bool = False) -> None:
        """The worker finished `key`. Queue it again at `again_at`, or when it was put during the work,
        whichever is earlier; with `hold`, not before `again_at` (a put during the work is absorbed)."""
        with self._cond:
            self._in_flight.discard(key)
            pending = self._again.pop(key, None)
        times = [t for t in (again_at, None if hold and again_at is not None else pending) if t is not None]
        if times:
            self.put(key, min(times))

    def discard(self, key: Path) -> None:
        """Forget a queued key (its folder vanished)."""
        with self._cond:
            self._ready_at.pop(key, None)

    def close(self) -> None:
        """Wake every waiting `get`, which then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready_at)

    def in_flight(self) -> set[Path]:
        with self._cond:
            return set(self._in_flight)

    def ready_count(self) -> int:
        now = self._clock()
        with self._cond:
            return sum(1 for t in self._ready_at.values() if t <= now)

    def next_ready_at(self) -> float | None:
        with self._cond:
            return self._next_time_locked()

    def snapshot(self) -> dict[Path, float]:
        with self._cond:
            return dict(self._ready_at)
