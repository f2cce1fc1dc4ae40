"""The API calls' pace shared by the processes of one daemon (`processes` > 1).

The API limits the key, so one pace must hold for every process. The rule stays `pacing.Pacer`, run by
the supervisor alone on every process's API-call answers (each process sends its answers to the
supervisor on its notify socket, a line each: `X_API_CALL=<status> <seconds> <retry_after> <answered>`,
gathered for up to `FLUSH_SECONDS` into one datagram, sent by a thread if no answer follows, a 429 at
once with those before it: a datagram a call woke the supervisor's thread, in process 0 among its
workers, three times a run); the bucket is shared: the rate the rule set, the tokens, when they were
counted and whether a call had to wait, in a small file of the state directory mapped by every process
(`PaceFile`). A process takes a token under the file's `exclusive()`; while the pace is unlimited (rate
0) it reads the rate alone and takes no lock.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watcher.cloud.client import RequestOutcome
from watcher.cloud.statuses import PUT
from watcher.daemon.pacing import THROTTLED
from watcher.daemon.sharedfile import SharedFile

FILE_NAME = "api-pace"
MESSAGE = "X_API_CALL"
_FIELDS = struct.Struct("dddd")   # rate (0: unlimited), tokens, stamp (monotonic), waits since read
BURST = 0.1                       # seconds of tokens the bucket holds (at least one): `pacing.Settings.burst`
EPSILON = 1e-9
FLUSH_SECONDS = 0.05              # answers gathered at most this long before they are sent (a 429: at once)
FLUSH_LINES = 100                 # ... or this many


class PaceFile:
    """The shared bucket. Every method is safe across processes and threads (`SharedFile.exclusive`)."""

    def __init__(self, state_dir: Path) -> None:
        self._file = SharedFile(state_dir, FILE_NAME, _FIELDS.size)
        view = self._file.view
        assert view is not None
        self._map = view

    def rate(self) -> float | None:
        rate = struct.unpack_from("d", self._map)[0]
        return None if rate <= 0 else float(rate)

    def delay(self, now: float) -> float:
        """Seconds before the next API call may go (0: it may go now, and has taken its token)."""
        if self.rate() is None:
            return 0.0
        with self._file.exclusive():
            rate, tokens, stamp, waits = _FIELDS.unpack_from(self._map)
            if rate <= 0:
                return 0.0
            # `now` was read before the lock: a caller that waited for it behind a later one must not move
            # the stamp back, or the time between would be counted twice (measured: 30 tokens a second
            # at a rate of 26 with 64 threads in two processes).
            now = max(now, stamp)
            tokens = min(max(1.0, rate * BURST), tokens + max(0.0, now - stamp) * rate)
            if tokens >= 1.0 - EPSILON:
                _FIELDS.pack_into(self._map, 0, rate, max(0.0, tokens - 1.0), now, waits)
                return 0.0
            _FIELDS.pack_into(self._map, 0, rate, tokens, now, waits + 1)
            return float((1.0 - tokens) / rate)

    def set_rate(self, rate: float | None, now: float, *, empty: bool) -> None:
        """The rule's new rate (None: unlimited); `empty`: the bucket starts empty (after a decrease)."""
        with self._file.exclusive():
            _, tokens, stamp, waits = _FIELDS.unpack_from(self._map)
            if empty:
                tokens, stamp = 0.0, now
            _FIELDS.pack_into(self._map, 0, rate or 0.0, tokens, stamp, waits)

    def take_waits(self) -> int:
        """How many calls had to wait for a token since the last time this was asked."""
        with self._file.exclusive():
            rate, tokens, stamp, waits = _FIELDS.unpack_from(self._map)
            _FIELDS.pack_into(self._map, 0, rate, tokens, stamp, 0.0)
        return int(waits)

    def close(self) -> None:
        self._file.close()


class SharedPacing:
    """A process's side (what `Service` uses instead of `Pacing` when it is one of several): the shared
    bucket's wait before each API call, and each answer sent to the supervisor."""

    def __init__(self, state_dir: Path, send: Callable[[str], object],
                 clock: Callable[[], float] = time.monotonic, *, flush_after: float | None = FLUSH_SECONDS) -> None:
        self.file = PaceFile(state_dir)
        self.send = send
        self.clock = clock
        self._lock = threading.Lock()   # the lines not sent yet
        self._pending: list[str] = []
        self._sent_at = -math.inf
        # Lines gathered are sent `flush_after` seconds later even if no answer follows (None: only with
        # the next answer; for tests of the gathering): a process gone quiet, every call held by a 429,
        # kept the supervisor from the accepted calls it must judge that 429 by.
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_after is not None:
            self._thread = threading.Thread(target=self._flusher, args=(flush_after,), name="pace-flush", daemon=True)
            self._thread.start()

    def delay(self) -> float:
        return self.file.delay(self.clock())

    def observe(self, outcome: RequestOutcome) -> None:
        if outcome.endpoint == PUT:
            return
        retry_after = "-" if outcome.retry_after is None else f"{outcome.retry_after:.3f}"
        status = "-" if outcome.status is None else str(outcome.status)
        # When it was answered, on the clock every process shares (CLOCK_MONOTONIC): the supervisor reads
        # the lines later, and the rule's spans are from send and answer times.
        now = self.clock()
        with self._lock:
            self._pending.append(f"{MESSAGE}={status} {outcome.seconds:.6f} {retry_after} {now:.6f}")
            due = (outcome.status == THROTTLED or now - self._sent_at >= FLUSH_SECONDS
                   or len(self._pending) >= FLUSH_LINES)
            if not due:
                if len(self._pending) == 1:
                    self._wake.set()
                return
        self.flush()

    def flush(self) -> None:
        """Send the lines gathered so far."""
        with self._lock:
            lines, self._pending, self._sent_at = self._pending, [], self.clock()
        if lines:
            self.send("\n".join(lines))

    def _flusher(self, after: float) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            self._wake.clear()
            self._closed.wait(after)
            self.flush()

    def close(self) -> None:
        """Stop the flusher (sending what is gathered) and unmap the bucket."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        self.file.close()

    def rate(self) -> float | None:
        return self.file.rate()


def parse(value: str) -> tuple[int | None, float, float | None, float] | None:
    """An `X_API_CALL` value: (status, seconds, retry_after, answered at), or None when malformed."""
    parts = value.split()
    if len(parts) != 4:
        return None
    try:
        status = None if parts[0] == "-" else int(parts[0])
        retry_after = None if parts[2] == "-" else float(parts[2])
        return status, float(parts[1]), retry_after, float(parts[3])
    except ValueError:
        return None
