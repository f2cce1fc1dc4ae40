"""sd_notify without a systemd library.

The protocol is one datagram per message on the unix socket named by ``$NOTIFY_SOCKET``: a
filesystem path, or ``@name`` for the abstract namespace. A message is newline-separated
``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1``).
Without the variable (not started by systemd, or ``Type=simple``) every call is a no-op, and no
call ever raises: a service manager that went away must not take the daemon with it.

The watchdog (``WatchdogSec=``) is announced by ``$WATCHDOG_USEC``; it applies to this process
only when ``$WATCHDOG_PID`` is unset or names it, so a child that inherited the environment does
not ping on its parent's behalf.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType

import structlog

log = structlog.get_logger("watcher.daemon.notify")


class Notifier:
    """The sd_notify protocol: one datagram per message on $NOTIFY_SOCKET (a path, or '@name' for
    the abstract namespace). A no-op when the variable is unset.

    `enabled` says whether a socket is configured. `watchdog_interval` is the number of seconds
    between WATCHDOG=1 pings (half of $WATCHDOG_USEC, as systemd recommends), or None when no
    watchdog applies to this process (or there is no socket to ping). Thread-safe; `close()` is
    final: later calls send nothing and return False.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.enabled: bool = self._address is not None
        self.watchdog_interval: float | None = _watchdog_interval(env) if self.enabled else None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self._failing = False   # a failure was logged; stay quiet until a send succeeds again

    def send(self, *lines: str) -> bool:
        """Send `lines` joined with newlines as ONE datagram. True when it was sent; False when
        disabled, closed, given nothing, or the send failed (logged once at debug per outage)."""
        if self._address is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    # Never wait on systemd while holding the lock: a full queue is a failed send.
                    self._sock.setblocking(False)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    log.debug("sd_notify_failed", error=exc.strerror or str(exc))
                return False
            self._failing = False
            return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (start-up finished, or a reload finished), with a STATUS= line when given."""
        return self.send("READY=1", *_status_lines(status))

    def status(self, text: str) -> bool:
        """STATUS=<text>, shown by `systemctl status`; newlines become spaces (one line per key)."""
        return self.send(*_status_lines(text))

    def stopping(self) -> bool:
        """STOPPING=1: the drain has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as Type=notify-reload requires); send
        `ready()` when the reload is done, whether it was applied or rejected."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> bool:
        """WATCHDOG=1, only when a watchdog applies to this process (`watchdog_interval` is set)."""
        if self.watchdog_interval is None:
            return False
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; idempotent."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _socket_address(value: str) -> str | None:
    """'/path' as it is, '@name' as the abstract '\\0name'; anything else (unset, relative, a
    vsock address we do not speak) disables notifications."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value:
        log.debug("sd_notify_unsupported_socket", notify_socket=value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when it is a positive integer and $WATCHDOG_PID is unset
    or this process; None otherwise (as sd_watchdog_enabled decides)."""
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) <= 0:
        return None
    return int(usec) / 2_000_000


def _status_lines(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)
