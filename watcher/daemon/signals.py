"""Signals relayed to an ordinary thread, so that no signal handler ever takes a lock.

A Python signal handler runs on the main thread between two bytecodes, wherever that thread is:
inside `threading.Event.wait` or `clear`, inside any `with lock:` block. A handler that takes a lock
the interrupted code holds never gets it, and the main thread is stuck for good. `Event.set` takes
the event's own lock, so a SIGTERM handler calling `Service.request_stop` (which sets `_wake`) hung the
daemon whenever the signal was handled while the main loop was inside `_wake.wait` or `_wake.clear`
(seen under load, right after a WATCHDOG=1 ping; nothing was logged after the SIGTERM).

Here the Python-level handler does nothing. The interpreter's C-level handler writes the signal's
number to a pipe (`signal.set_wakeup_fd`) at once, whichever thread the kernel interrupted, and a
thread of ours reads it and calls the action for that signal as any other thread would: it may take
locks, and if one is held it waits for it like everyone else. Signals arriving together are relayed
in order, one call each (a second SIGTERM is a second `request_stop`, which aborts).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("watcher.daemon.signals")

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the wake-up byte is the message; see the module docstring)."""


class SignalRelay:
    """Call `actions[signum]()` on the relay's thread for each signal received.

    `start()` (main thread only, as `signal.signal` requires) installs the handlers and the wake-up pipe
    and starts the thread; `close()` (main thread only) restores the previous handlers and wake-up fd and
    ends the thread. An action that raises is logged (a bug) and the relay goes on."""

    def __init__(self, actions: Mapping[int, Callable[[], None]]) -> None:
        self.actions = dict(actions)
        self._previous: dict[int, Handler] = {}
        self._previous_fd = -1
        self._read_fd = self._write_fd = -1
        self._thread: threading.Thread | None = None

    def start(self) -> SignalRelay:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)   # set_wakeup_fd requires it: a full pipe drops, never blocks
        try:
            self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except ValueError:   # not the main thread
            os.close(self._read_fd)
            os.close(self._write_fd)
            raise
        for signum in self.actions:   # a signal from here on waits in the pipe for the thread
            self._previous[signum] = signal.signal(signum, _noted)
        self._thread = threading.Thread(target=self._relay, name="signals", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Restore what was there before; idempotent. A signal arriving from now on is not relayed."""
        if self._thread is None:
            return
        self._restore()
        os.close(self._write_fd)   # the relay reads to the end of the pipe, then stops
        self._thread.join()
        os.close(self._read_fd)
        self._thread = None

    def forget(self) -> None:
        """In a child forked while the relay ran (`watcher.daemon.forked`, before it unblocks the signals):
        the handlers and wake-up fd as they were before, and the pipe closed. The relay's thread is not
        in the child, and a signal written to the pipe would be relayed by the parent's."""
        if self._thread is None:
            return
        self._restore()
        os.close(self._write_fd)
        os.close(self._read_fd)
        self._thread = None

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)   # None: set outside Python
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_fd)

    def __enter__(self) -> SignalRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _relay(self) -> None:
        while data := os.read(self._read_fd, 64):
            for signum in data:
                action = self.actions.get(signum)
                if action is None:
                    continue
                try:
                    action()
                except Exception:   # a bug in an action: say so, keep relaying the others
                    log.exception("signal_action_failed", signal=signal.Signals(signum).name)
