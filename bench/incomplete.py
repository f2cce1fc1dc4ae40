"""7. Many incomplete folders: the daemon's CPU while thousands of folders never get their marker.

Past `max_folder_watches` (1,024) incomplete folders are not watched but re-checked; issue 8 made the
re-check back off with the folder's age (2 s at first, at most every 2 minutes). N empty folders are
created (marker mode, no `DONE`), the daemon is started, and utime+stime (/proc/<pid>/stat) are read
over consecutive windows after the start-up scan, so the first window shows the start and the later
ones the steady state.

    python -m bench.incomplete [--folders 20000] [--windows 4] [--window 60]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import WORK, fresh_dir
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator


@dataclass
class Incomplete:
    folders: int
    window: float
    cpu: list[float] = field(default_factory=list)    # CPU seconds per window, in order

    def cores(self) -> list[float]:
        """Each window's CPU as a fraction of one core."""
        return [round(c / self.window, 3) for c in self.cpu]


def incomplete_tree(n: int, log: Callable[[str], None] = print) -> Path:
    root = fresh_dir(WORK / f"incomplete-{n}")
    for i in range(n):
        (root / f"waiting-{i:06d}").mkdir()
    log(f"created {n} incomplete folders in {root}")
    return root


def measure(folders: int, windows: int, window: float, *, log: Callable[[str], None] = print) -> Incomplete:
    root = incomplete_tree(folders, log)
    work = fresh_dir(WORK / f"incomplete-run-{folders}")
    result = Incomplete(folders, window)
    with Emulator() as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state")
        with DaemonProcess(config, work / "daemon.log") as daemon:
            daemon.wait_count("startup_scan_done", 1, 120, keep=set())
            for _ in range(windows):
                cpu0 = daemon.cpu()
                deadline = time.monotonic() + window
                while time.monotonic() < deadline:
                    daemon.check_alive()
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                result.cpu.append(daemon.cpu() - cpu0)
                log(f"window {len(result.cpu)}: {result.cpu[-1]:.2f} CPU s over {window:.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", type=int, default=20_000)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    result = measure(args.folders, args.windows, args.window)
    print(f"{result.folders} incomplete folders, CPU as a fraction of one core per {result.window:.0f} s window "
          f"after the start-up scan: {result.cores()}")


if __name__ == "__main__":
    main()
