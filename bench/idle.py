"""5. Idle cost: the daemon's CPU seconds over a window with only tracked folders present.

After `startup_scan_done` and a short settle, utime+stime (/proc/<pid>/stat) are read before and
after the window; the emulator's request count over the window should not move.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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


def measure(folders: int, window: float, *, log: callable = print) -> Idle:  # type: ignore[valid-type]
    root = tracked_tree(folders, log)
    work = fresh_dir(WORK / f"idle-run-{folders}")
    with Emulator() as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state")
        with DaemonProcess(config, work / "daemon.log") as daemon:
            daemon.wait_count("startup_scan_done", 1, 60, keep=set())
            time.sleep(3)
            cpu0, req0, emu_cpu0 = daemon.cpu(), emu.stats()["requests"], emu.cpu()
            started = time.monotonic()
            deadline = started + window
            while time.monotonic() < deadline:
                daemon.check_alive()
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            cpu1 = daemon.cpu()
            elapsed = time.monotonic() - started
            emu_stats = emu.stats()
            peak = daemon.peak_rss_mb()
        # Each stats read is itself a request; subtract the one that opened the window.
        requests = emu_stats["requests"] - req0 - 1
        emu_cpu = float(emu_stats["cpu_seconds"]) - emu_cpu0
    return Idle(folders, elapsed, cpu1 - cpu0, requests, peak, emu_cpu)
