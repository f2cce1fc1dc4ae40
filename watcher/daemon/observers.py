"""watchdog's observers as the detectors use them: made, unscheduled and stopped safely.

`stop_observer` gives up after a while, since `stop()` needs the lock a stuck dispatcher holds;
`OverflowSignal` turns watchdog's log record of a kernel queue overflow into a callback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import structlog
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

log = structlog.get_logger("watcher.daemon.detection")

ObserverFactory = Callable[[], BaseObserver]


def polling_factory(interval: float) -> ObserverFactory:
    return lambda: PollingObserver(timeout=interval)


def unschedule(observer: BaseObserver, watch: ObservedWatch) -> None:
    """Remove `watch`; one whose emitter is already gone (a stopped observer) is no error."""
    with contextlib.suppress(KeyError, OSError):
        observer.unschedule(watch)


def stop_observer(observer: BaseObserver, seconds: float) -> None:
    """Stop and join `observer`, giving up after `seconds`: `stop()` needs the observer's lock, which a
    stuck dispatcher never releases. Its threads are daemon threads and end with the process."""
    stopper = threading.Thread(target=observer.stop, name="observer-stop", daemon=True)
    stopper.start()
    stopper.join(seconds)
    if stopper.is_alive():
        log.error("observer_stop_timeout", seconds=seconds, hint="its dispatcher is stuck; it is left behind")
        return
    observer.join(timeout=seconds)


class OverflowSignal(logging.Handler):
    """watchdog reports a kernel queue overflow only as a log record; turn it into a callback."""

    def __init__(self, callback: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.callback()
