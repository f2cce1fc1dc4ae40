"""How many folders may be in flight: a limit that adapts to the API's answers (AIMD), within `workers`.

The rule is Vector's adaptive request concurrency (ARC; vector.dev/docs/architecture/arc, and
`src/sinks/util/adaptive_concurrency/controller.rs`), with its defaults: `ewma_alpha` 0.4,
`decrease_ratio` 0.9, `rtt_deviation_scale` 2.5. Time is cut into windows, each as long as the mean
API-call round trip so far (at least `min_window`, so that a window averages more than one call).
At the end of a window:

- **increase** by one (never above `workers`) when the limit was reached during the window (folders
  waited for a slot, so there is evidence that more would be used), nothing pushed back, and the
  window's mean API-call time is not above the moving average of the past windows' means;
- **decrease** to `floor(limit * decrease_ratio)` (at least 1) when something pushed back (a 429, a
  408, a 5xx, a timeout or a reset, on an API call or an upload), or the window's mean API-call time
  rose above the moving average by more than `rtt_deviation_scale` times its moving deviation (an
  exponentially weighted mean and variance, West's recurrence, as Vector's `EwmaVar`).

Before the first decrease the limit doubles instead (slow start, as TCP's; Vector has none, it starts at
one and adds one): a window that reached the limit with nothing pushed back and a mean API-call time not
above the moving average (Vector's condition to add one) doubles it, within `workers`. At 100 ms a
round trip, +1 a window took the limit from 8 to 28 in 12 s, longer than a 500-folder backlog; doubling
reaches 32 in three windows.
The first decrease (a 429, an error, a risen time) ends slow start for good.

The limit never grows in a window in which the daemon's process used 0.9 of a core or more (`cpu_bound`):
Python runs one thread at a time, so the daemon is then the bottleneck and more folders in flight only
cost more CPU each (measured at 20 ms, 500 folders: the same 70-80 runs/s with 8 in flight at 7.5 ms of
CPU per run as with 32 at 10 ms; more threads wake and wait for each other). It does not shrink for it:
the API said nothing.

The limit also follows the daemon's own queue, as TCP Vegas (and Netflix's `VegasLimit`) estimate it: a
window's mean API-call time above the least window mean of the last `base_windows` windows (the time
with nothing waiting; its base) means folders wait in the daemon itself, for the interpreter or a
connection, about `limit * (1 - base / mean)` of them. Above `queue_high` (6) the limit shrinks by one
a window (and slow start ends); above `queue_low` (3) it is kept; below it may grow. The API's latency
barely moves with the daemon's load, so ARC alone grows the limit to `workers` (measured at 20 ms, 500
folders, two processes: 29 in flight on average at 8.9 ms of CPU per run and 136 runs/s, against 12-19
in flight, 6.6-6.7 ms and 143-170 runs/s with `concurrency: fixed` at 16 or 24); at 0 ms more threads
only wait for each other. A base that rose for good (a slower API) is the new base after `base_windows`
windows, a few seconds.

A risen time must also be 10% above the moving average (`rise_tolerance`): against a steady service the
deviation is near zero and a few milliseconds of jitter, or the connections a new worker thread opens,
would otherwise read as load (measured at 100 ms: decreases every second or so, the limit stuck near 17).

Verdicts (400, 401, 403, 404, 409, 413, 422, a refused or expired upload URL) say nothing about load:
they neither push back nor give a time. Presigned PUTs are judged on a track of their own, in seconds
per MiB (a PUT of less than a MiB counts as one), so that a large upload does not read as a slower
API; a PUT track that rises beyond its own deviation decreases the limit as well.

Where Vector starts at one request, the limit starts at `INITIAL` (8, the fixed worker count of
earlier releases) or `workers` if lower, so that a start-up backlog is not slower than before.
With `concurrency: fixed` the limit is `workers`, always.

`Aimd` is the rule, pure and clock-driven (tests step the clock); `Concurrency` makes it the slots the
worker threads take (`slot`) and is fed every request outcome (`observe`).
Its lock guards only its own counts, and is never held while calling anything else.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher.cloud.client import RequestOutcome
from watcher.cloud.statuses import PUT
from watcher.config import CONCURRENCY as MODES
from watcher.config import Config
from watcher.errors import TransientError, UploadExpired, UploadRefused

log = structlog.get_logger("watcher.daemon.concurrency")

ADAPTIVE, FIXED = MODES
INITIAL = 8
MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    """Vector's ARC defaults (`AdaptiveConcurrencySettings`), and our window floor."""

    ewma_alpha: float = 0.4
    decrease_ratio: float = 0.9
    rtt_deviation_scale: float = 2.5
    initial: int = INITIAL
    min_window: float = 0.05
    slow_start: bool = True
    rise_tolerance: float = 0.1
    cpu_bound: float = 0.9   # the process's CPU over a window, in cores, at which the limit stops growing
    queue_low: float = 3.0   # folders waiting in the daemon (Vegas' alpha): above it the limit stops growing
    queue_high: float = 6.0  # ... (Vegas' beta): above it the limit shrinks by one
    base_windows: int = 64   # the base API-call time is the least window mean of this many windows


class MeanVar:
    """Exponentially weighted mean and variance (West's recurrence; Vector's `EwmaVar`)."""

    def __init__(self, alpha: float, first: float) -> None:
        self.alpha = alpha
        self.mean = first
        self.variance = 0.0

    def update(self, x: float) -> None:
        diff = x - self.mean
        increment = self.alpha * diff
        self.mean += increment
        self.variance = (1 - self.alpha) * (self.variance + diff * increment)

    def threshold(self, scale: float, tolerance: float = 0.0) -> float:
        """Above this, a window's mean counts as risen: `scale` deviations above the mean, and at least
        `tolerance` (a fraction) of the mean above it."""
        return self.mean + max(scale * math.sqrt(max(0.0, self.variance)), tolerance * self.mean)


class Track:
    """One kind of time (API calls, or PUT seconds per MiB): this window's mean and the past windows'."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.past: MeanVar | None = None

    def add(self, seconds: float) -> None:
        self.total += seconds
        self.count += 1

    def current(self) -> float | None:
        return self.total / self.count if self.count else None

    def risen(self, scale: float, tolerance: float = 0.0) -> bool:
        now = self.current()
        return now is not None and self.past is not None and now > self.past.threshold(scale, tolerance)

    def flat(self) -> bool:
        """The window's mean is not above the past mean (Vector's condition to increase)."""
        now = self.current()
        return now is not None and self.past is not None and now <= self.past.mean

    def close(self, alpha: float) -> None:
        """The window ends: its mean joins the past's moving average."""
        now = self.current()
        if now is not None:
            if self.past is None:
                self.past = MeanVar(alpha, now)
            else:
                self.past.update(now)
        self.total, self.count = 0.0, 0


def pushes_back(outcome: RequestOutcome) -> bool:
    """Throttled (429), a timeout (408), a server error (5xx), or no answer (a timeout, a reset). A PUT's
    403 (expired or refused URL) is a verdict on the URL, not load."""
    if outcome.error is None:
        return False
    if outcome.status is None:
        return issubclass(outcome.error, TransientError) and not issubclass(outcome.error, (UploadExpired,
                                                                                           UploadRefused))
    return outcome.status in (408, 429) or outcome.status >= 500


class Aimd:
    """The limit and the evidence of the current window. Not thread-safe: `Concurrency` guards it."""

    def __init__(self, ceiling: int, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.limit = max(1, min(self.settings.initial, ceiling))
        self.busy = 0              # folders in flight (a slot that got a folder)
        self.reached = False       # the limit was reached during this window
        self.back_pressure = False
        self.api = Track()
        self.put = Track()
        self.window_ends: float | None = None
        self.changes = 0           # how many times the limit moved (for tests and status)
        self.slow_start = self.settings.slow_start   # doubling until the first decrease
        self.window_started = (0.0, 0.0)   # (time, process CPU seconds) when this window began
        self.means: deque[float] = deque(maxlen=self.settings.base_windows)   # past windows' API-call means

    def clamp(self, ceiling: int) -> None:
        """`workers` may have changed (a reload): the limit never exceeds it."""
        self.limit = max(1, min(self.limit, ceiling))

    def started(self) -> None:
        self.busy += 1
        if self.busy >= self.limit:
            self.reached = True

    def finished(self) -> None:
        self.busy = max(0, self.busy - 1)

    def observe(self, outcome: RequestOutcome, now: float, ceiling: int,
                cpu: float | Callable[[], float] = 0.0) -> None:
        """One request's outcome; at the window's end, adjust the limit (within `ceiling`). `cpu`: the
        process's CPU seconds so far, or how to read them (a system call: read only when a window starts or
        ends; its share of a core over the window is judged at the window's end)."""
        if pushes_back(outcome):
            self.back_pressure = True
        elif outcome.error is None:
            if outcome.endpoint == PUT:
                self.put.add(outcome.seconds / max(1.0, outcome.size / MIB))
            else:
                self.api.add(outcome.seconds)
        if self.window_ends is None:
            self.window_ends = now + self.settings.min_window
            self.window_started = (now, cpu() if callable(cpu) else cpu)
        elif now >= self.window_ends:
            self.adjust(now, ceiling, cpu() if callable(cpu) else cpu)

    def queued(self) -> float:
        """Folders waiting in the daemon (Vegas' estimate): `limit * (1 - base / mean)` of this window's
        API calls, the base being the least window mean of the past `base_windows`; 0 without both."""
        mean = self.api.current()
        if mean is None or mean <= 0 or not self.means:
            return 0.0
        return self.limit * (1 - min(*self.means, mean) / mean)

    def adjust(self, now: float, ceiling: int, cpu: float = 0.0) -> None:
        """The window is over: increase, decrease or keep the limit; then start the next window."""
        s = self.settings
        before = self.limit
        started, cpu_then = self.window_started
        busy_cpu = now > started and (cpu - cpu_then) / (now - started) >= s.cpu_bound
        self.window_started = (now, cpu)
        rising = self.api.risen(s.rtt_deviation_scale, s.rise_tolerance) or \
            self.put.risen(s.rtt_deviation_scale, s.rise_tolerance)
        queued = self.queued()
        if self.back_pressure or rising:
            self.limit = max(1, math.floor(self.limit * s.decrease_ratio))
            self.slow_start = False
        elif queued > s.queue_high and self.reached:
            self.limit = max(1, self.limit - 1)   # folders wait in the daemon itself, not at the API
            self.slow_start = False
        elif busy_cpu or queued > s.queue_low:
            pass   # the daemon is the bottleneck: more folders in flight would only cost more CPU each
        elif self.reached and self.limit < ceiling and self.slow_start and self.api.flat():
            self.limit *= 2
        elif self.reached and self.limit < ceiling and self.api.flat() and \
                not self.put.risen(s.rtt_deviation_scale, s.rise_tolerance):
            self.limit += 1
        self.clamp(ceiling)
        self.changes += self.limit != before
        mean = self.api.current()
        if mean is not None:
            self.means.append(mean)
        self.api.close(s.ewma_alpha)
        self.put.close(s.ewma_alpha)
        past = self.api.past.mean if self.api.past is not None else 0.0
        self.window_ends = now + max(s.min_window, past)
        self.back_pressure = False
        self.reached = self.busy >= self.limit   # folders still in flight at the limit count for the next one


class Concurrency:
    """Thread-safe slots for the worker threads, `limit()` of them. `workers` (the ceiling) and
    `concurrency` (the mode) are read from the configuration each time they matter, so a reload applies
    at once (`wake` the waiting workers then)."""

    def __init__(self, config: Callable[[], Config], *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time,
                 settings: Settings | None = None) -> None:
        self.config = config
        self.clock = clock
        self.cpu = cpu
        self._cond = threading.Condition()
        self._aimd = Aimd(self.ceiling(), settings)
        self._held = 0   # slots handed out (a worker waiting for a folder holds one too)
        self._closed = False

    def ceiling(self) -> int:
        return self.config().workers

    def mode(self) -> str:
        return self.config().concurrency

    def limit(self) -> int:
        """Folders that may be in flight now: `workers` in fixed mode, else the adaptive limit."""
        ceiling, mode = self.ceiling(), self.mode()
        if mode == FIXED:
            return ceiling
        with self._cond:
            self._aimd.clamp(ceiling)
            return self._aimd.limit

    def acquire(self, timeout: float) -> bool:
        """Wait until a slot is free (then hold it) for at most `timeout` seconds: False on timeout or once
        closed. `slot` releases it."""
        deadline = time.monotonic() + timeout
        while True:
            limit = self.limit()   # read outside the lock: it reads the configuration
            with self._cond:
                if self._closed:
                    return False
                if self._held < limit:
                    self._held += 1
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    @contextmanager
    def slot(self, take: Callable[[float], Path | None], *, timeout: float,
             slot_timeout: float | None = None) -> Iterator[Path | None]:
        """A slot within the limit, and a folder taken with it (`take(timeout)`, the folder index's): the
        folder, in flight until the block ends and the slot is released; None when no slot was free within
        `slot_timeout` (default `timeout`) or no folder came within `timeout`, or once closed. Waiting for a
        slot holds nothing and every change wakes it, so its timeout can be long: the workers beyond the
        limit (24 of the default 32 at rest) then do not wake an idle daemon every few seconds. `take` is
        called without the lock. `close` (here and the index's) and `wake` interrupt the waits; the timeouts
        are only a safety net."""
        if not self.acquire(timeout if slot_timeout is None else slot_timeout):
            yield None
            return
        folder: Path | None = None
        try:
            folder = take(timeout)
            if folder is not None:
                with self._cond:
                    self._aimd.started()
            yield folder
        finally:
            with self._cond:
                self._held = max(0, self._held - 1)
                if folder is not None:
                    self._aimd.finished()
            # No waiting worker is woken: this one takes its slot again at once (its loop comes back), so
            # the same few threads keep working, warm, with their own connections, instead of handing each
            # slot to another thread. A worker that leaves its loop calls `wake`.

    def observe(self, outcome: RequestOutcome) -> None:
        """One HTTP attempt's outcome (the client's observer); in fixed mode it changes nothing."""
        if self.mode() == FIXED:
            return
        ceiling = self.ceiling()
        now = self.clock()
        with self._cond:
            before = self._aimd.limit
            self._aimd.observe(outcome, now, ceiling, self.cpu)
            after, slow = self._aimd.limit, self._aimd.slow_start
            if after > before:   # as many waiting workers as there are new slots (not all: a herd)
                self._cond.notify(after - before)
        if after != before:
            log.debug("concurrency_limit", limit=after, before=before, slow_start=slow)

    def wake(self) -> None:
        """`workers` or the mode changed (a reload): waiting workers look at the limit again."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stopping: every waiting `acquire` returns False."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> dict[str, object]:
        """For status and the gauge: mode, the limit now, the ceiling (`workers`), folders in flight."""
        mode, ceiling, limit = self.mode(), self.ceiling(), self.limit()
        with self._cond:
            return {"mode": mode, "limit": limit, "workers": ceiling, "in_flight": self._aimd.busy}
