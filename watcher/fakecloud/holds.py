"""Holding requests: a test stops the requests of one endpoint at a known point and lets them go later.

    cloud.hold("uploadurl") -> Hold    every later request to the endpoint waits in its handler thread
    hold.wait_held(timeout)            returns once a request is waiting (the client is mid-request)
    hold.release()                     the waiting requests go on, and later ones are not held

A request is held after routing and before latency, faults and processing: a held `create_run` has
created nothing yet, a held `put` has sent its headers and its body is still unread. Holds apply to
the API and upload endpoints only, never to /_fake/* control requests. `Holds.close()` (called by
`FakeCloud.stop()`) releases everything, so that no handler thread waits forever.
"""

from __future__ import annotations

import threading
import time

from watcher.fakecloud.faults import ENDPOINTS

_KNOWN = ", ".join(sorted(ENDPOINTS))


class Hold:
    """One hold on `endpoint` (only requests declaring `content_length`, when that is given).

    `waiting` counts the requests waiting now, `total` every request held so far. Thread-safe.
    """

    def __init__(self, endpoint: str, content_length: int | None, cond: threading.Condition) -> None:
        self.endpoint = endpoint
        self.content_length = content_length
        self._cond = cond
        self._released = False
        self._waiting = 0
        self._total = 0

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    @property
    def total(self) -> int:
        with self._cond:
            return self._total

    @property
    def released(self) -> bool:
        with self._cond:
            return self._released

    def matches(self, endpoint: str, content_length: int | None) -> bool:
        return endpoint == self.endpoint and self.content_length in (None, content_length)

    def wait_held(self, timeout: float, count: int = 1) -> None:
        """Return once `count` requests have been held (waiting now or released since).

        Raises TimeoutError after `timeout` seconds, naming the endpoint and how many were held.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._total < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self._total} of {count} {self.endpoint} request(s) held "
                                       f"after {timeout}s")
                self._cond.wait(left)

    def release(self) -> None:
        """Let the waiting requests go on; later requests are not held. Idempotent."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    # Called by `Holds` with the condition's lock held.

    def _enter(self) -> None:
        self._waiting += 1
        self._total += 1
        self._cond.notify_all()

    def _leave(self) -> None:
        self._waiting -= 1


class Holds:
    """The active holds of one emulator; `wait` is called by the HTTP layer for every request."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: list[Hold] = []
        self._closed = False

    def hold(self, endpoint: str, *, content_length: int | None = None) -> Hold:
        """Hold the later requests to `endpoint` until the returned hold is released.

        Raises ValueError for an unknown endpoint or a negative length, RuntimeError once closed.
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {_KNOWN}")
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must not be negative")
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot hold requests of a stopped emulator")
            hold = Hold(endpoint, content_length, self._cond)
            self._active.append(hold)
            return hold

    def wait(self, endpoint: str, content_length: int | None) -> None:
        """Block the calling handler thread while an unreleased hold matches the request."""
        with self._cond:
            self._active = [h for h in self._active if not h._released]
            held = [h for h in self._active if h.matches(endpoint, content_length)]
            for hold in held:
                hold._enter()
            try:
                while any(not h._released for h in held):
                    self._cond.wait()
            finally:
                for hold in held:
                    hold._leave()

    def close(self) -> None:
        """Release every hold and refuse new ones (the emulator is stopping)."""
        with self._cond:
            self._closed = True
            for hold in self._active:
                hold._released = True
            self._active.clear()
            self._cond.notify_all()
