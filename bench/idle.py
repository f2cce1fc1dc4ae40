"""5. Idle cost: the daemon's CPU seconds over a window with only tracked folders present.

After `startup_scan_done` and a short settle, utime+stime (/proc/<pid>/stat) are read before and
after the window; the emulator's request count over the window should not move.

`systemd=True` runs the daemon as its unit does: $NOTIFY_SOCKET names a datagram socket the bench
binds and drains (as systemd's), and $WATCHDOG_USEC is the unit's WatchdogSec=300, so the daemon sends
its STATUS= line and WATCHDOG=1 pings as in production (without them it skips that work).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import WORK, fresh_dir
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import tracked_tree


@dataclass
class Idle:
    folders: int
    window: float
    cpu: float
    requests: int
    peak_mb: float | None
    emu_cpu: float
    notifications: int | None = None   # datagrams the daemon sent to the notify socket (systemd=True)

    @property
    def per_minute(self) -> float:
        return self.cpu * 60 / self.window


def _api_requests(stats: dict[str, Any]) -> int:
    """Requests other than our own /_fake/ reads."""
    return sum(sum(by.values()) for name, by in stats["by_endpoint"].items() if name != "control")


WATCHDOG_USEC = 300 * 1_000_000   # systemd/nextmv-watcher.service: WatchdogSec=300


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[Path, list[bytes]]]:
    """A bound datagram socket standing in for systemd's $NOTIFY_SOCKET, and the messages it received."""
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        path = Path(tmp) / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        received: list[bytes] = []

        def drain() -> None:
            with contextlib.suppress(OSError):
                while message := sock.recv(65536):   # b"" once shut down
                    received.append(message)

        reader = threading.Thread(target=drain, name="notify-socket", daemon=True)
        reader.start()
        try:
            yield path, received
        finally:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            reader.join(timeout=5)


def measure(folders: int, window: float, *, systemd: bool = False, log: Callable[[str], None] = print) -> Idle:
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        received: list[bytes] | None = None
        if systemd:
            path, received = stack.enter_context(notify_socket())
            env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        got = _measure(folders, window, env, log)
        if received is not None:
            got.notifications = len(received)
        return got


def _measure(folders: int, window: float, env: dict[str, str], log: Callable[[str], None]) -> Idle:
    root = tracked_tree(folders, log)
    work = fresh_dir(WORK / f"idle-run-{folders}{'-systemd' if env else ''}")
    with Emulator() as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state")
        with DaemonProcess(config, work / "daemon.log", env) as daemon:
            daemon.wait_count("startup_scan_done", 1, 60, keep=set())
            time.sleep(3)
            stats0 = emu.stats()
            cpu0, req0, emu_cpu0 = daemon.cpu(), _api_requests(stats0), float(stats0["cpu_seconds"])
            started = time.monotonic()
            deadline = started + window
            while time.monotonic() < deadline:
                daemon.check_alive()
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            cpu1 = daemon.cpu()
            elapsed = time.monotonic() - started
            emu_stats = emu.stats()
            peak = daemon.peak_rss_mb()
        requests = _api_requests(emu_stats) - req0
        emu_cpu = float(emu_stats["cpu_seconds"]) - emu_cpu0
    return Idle(folders, elapsed, cpu1 - cpu0, requests, peak, emu_cpu)
