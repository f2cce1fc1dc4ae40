"""5. Idle cost: the daemon's CPU seconds over a window with only tracked folders present.

After `startup_scan_done` and a short settle, utime+stime (/proc/<pid>/stat) are read before and
after the window; the emulator's request count over the window should not move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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

    @property
    def per_minute(self) -> float:
        return self.cpu * 60 / self.window


def _api_requests(stats: dict[str, Any]) -> int:
    """Requests other than our own /_fake/ reads."""
    return sum(sum(by.values()) for name, by in stats["by_endpoint"].items() if name != "control")


def measure(folders: int, window: float, *, log: Callable[[str], None] = print) -> Idle:
    root = tracked_tree(folders, log)
    work = fresh_dir(WORK / f"idle-run-{folders}")
    with Emulator() as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state")
        with DaemonProcess(config, work / "daemon.log") as daemon:
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
