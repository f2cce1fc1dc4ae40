"""4. Backlog scale: a large tree of run folders at start-up, most of them already tracked.

Time to the first upload is the first 2xx PUT the emulator counts (its stats are polled every
10 ms) after the daemon was spawned; the first POST comes from the earliest run's `created_at`.
The scan time is the daemon's own `startup_scan_done` event (the longest of its processes').
Peak RSS (VmHWM, added up over the processes) is read once every pending folder is tracked (or the
time limit is reached), so it covers scan and uploads. Afterwards
the same scan functions run alone in this process, for reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.common import WORK, BenchError, fresh_dir
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import backlog_tree, tracked_count
from watcher.runfolder.markers import StateStore
from watcher.runfolder.scan import iter_folders, quick_state


@dataclass
class Backlog:
    total: int
    pending: int
    first_put: float | None
    first_post: float | None
    scan_seconds: float | None
    scan_done_at: float | None   # seconds from spawn to the startup_scan_done event
    peak_mb: float | None
    tracked: int
    all_tracked_after: float | None
    own_cpu: float
    emu_cpu: float
    check: str
    scan_alone: tuple[float, float] | None = None   # (wall, CPU) seconds of the same scan with nothing else


def scan_alone(root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the daemon's own start-up scan functions over `root`, in this process,
    with no workers and no uploads competing: what the scan costs by itself."""
    store = StateStore(WORK / "scan-alone-state")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for folder in iter_folders(root):
        quick_state(store, folder)
    return time.perf_counter() - wall0, time.process_time() - cpu0


def measure(total: int, pending: int, *, timeout: float, log: Callable[[str], None] = print) -> Backlog:
    root, folders = backlog_tree(total, pending, log)
    work = fresh_dir(WORK / f"backlog-run-{total}")
    with Emulator() as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state")
        emu_cpu0 = emu.cpu()
        keep = {"daemon_started", "startup_scan_done", "folder_failed", "folder_error"}
        with DaemonProcess(config, work / "daemon.log") as daemon:
            first_put = None
            deadline = time.monotonic() + min(timeout, 60)
            while first_put is None:
                if emu.count("put") > 0:
                    first_put = time.time() - daemon.started_at
                    break
                daemon.check_alive()
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            check = "ok"
            all_tracked_after = None
            try:
                done = daemon.wait_count("run_tracked", pending, timeout, keep=keep, interval=0.2)
                all_tracked_after = done - daemon.started_at
            except BenchError as exc:
                check = str(exc).splitlines()[0][:200]
            daemon.poll(keep)
            peak = daemon.peak_rss_mb()
            own_cpu = daemon.cpu()
            # One event per process (`processes`), each for its share: the scan is done when the last is.
            scans = [e for e in daemon.events if e.get("event") == "startup_scan_done"]
            scan_seconds = scan_done_at = None
            if scans:
                last = max(scans, key=lambda e: e["timestamp"])
                scan_seconds = max(float(e["seconds"]) for e in scans)
                stamp = datetime.fromisoformat(last["timestamp"].replace("Z", "+00:00")).timestamp()
                scan_done_at = stamp - daemon.started_at
                finished, queued = (sum(int(e.get(k, 0)) for e in scans) for k in ("finished", "queued"))
                if finished != total - pending or queued != pending:
                    check = f"scan found finished={finished} queued={queued} in {len(scans)} process(es); " + check
            started_at = daemon.started_at
        emu_cpu = emu.cpu() - emu_cpu0
        runs = emu.runs()
    first_post = None
    if runs:
        first_post = min(datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")).timestamp()
                         for r in runs) - started_at
    tracked = tracked_count(folders)
    if len(runs) != tracked:
        check = f"{len(runs)} runs at the emulator for {tracked} tracked folders; " + check
    return Backlog(total, pending, first_put, first_post, scan_seconds, scan_done_at, peak, tracked,
                   all_tracked_after, own_cpu, emu_cpu, check, scan_alone(root))
