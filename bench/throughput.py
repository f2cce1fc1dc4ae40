"""1. Throughput: N small run folders present at start-up, tracked by the daemon and by the SDK loop.

Daemon: runs/s from spawning the process to the N-th `run_tracked` event (logged right after the
folder's `.nextmv-tracked.json` is written), then checked: N markers on disk, exactly N runs at
the emulator, N distinct names. "Steady" is the rate between the first and the last run created
at the emulator, i.e. without the process start-up. SDK: runs/s of the loop in bench.sdk_loop
(first track_run to last, interpreter start-up and imports excluded). A fresh emulator per run,
so its CPU seconds are those of this measurement alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.certs import Tls
from bench.common import API_KEY, PYTHON, REPO, WORK, BenchError, fresh_dir
from bench.concurrency import EVENTS, InFlight, in_flight
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import small_runs, tracked_count
from bench.profile import Profiler

ROUND_TRIPS = 3  # upload URL, PUT (a run's artifacts in parallel), POST


@dataclass
class Throughput:
    who: str                  # "daemon" or "sdk"
    latency: float
    https: bool
    workers: int | None       # the daemon's worker count (from its daemon_started event)
    n: int
    seconds: float
    steady_rate: float | None
    own_cpu: float            # CPU seconds of the daemon (or the SDK process)
    emu_cpu: float            # CPU seconds of the emulator process
    check: str                # "ok" or what did not match
    startup: float | None = None   # seconds from spawn to startup_scan_done
    after_startup: tuple[float, int] | None = None  # (CPU seconds, runs tracked) after startup_scan_done
    user_sys: tuple[float, float] | None = None
    profile: str | None = None
    flight: InFlight | None = None   # folders in flight at once, from the daemon's log (bench.concurrency)

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_per_run_after_startup(self) -> float | None:
        """The daemon's CPU seconds per run tracked after its start-up scan was done (issue 13)."""
        if not self.after_startup or self.after_startup[1] <= 0:
            return None
        return self.after_startup[0] / self.after_startup[1]

    def limit(self) -> float | None:
        """W / (R x L): the most runs per second `workers` can do at this latency."""
        if not self.workers or self.latency <= 0:
            return None
        return self.workers / (ROUND_TRIPS * self.latency)


def _created(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _check_runs(emu: Emulator, n: int) -> tuple[str, float | None]:
    runs = emu.runs()
    names = {r["body"].get("name") for r in runs}
    problems = []
    if len(runs) != n:
        problems.append(f"{len(runs)} runs at the emulator, expected {n}")
    if len(names) != len(runs):
        problems.append(f"{len(runs) - len(names)} duplicate names")
    created = sorted(_created(r["created_at"]) for r in runs)
    steady = (len(created) - 1) / (created[-1] - created[0]) if len(created) > 1 and created[-1] > created[0] \
        else None
    return ("ok" if not problems else "; ".join(problems)), steady


def daemon_run(n: int, latency: float, tls: Tls | None, ca: Path, workers: int | None, *,
               timeout: float, profile: Path | None = None, gil: bool = False,
               extra: dict[str, Any] | None = None) -> Throughput:
    tag = f"tp-daemon-{int(latency * 1000)}ms-{'https' if tls else 'http'}-w{workers or 'default'}"
    if profile:
        tag += "-profiled"
    work = fresh_dir(WORK / tag)
    root = work / "root"
    folders = small_runs(root, n)
    with Emulator(latency=latency, cert=tls.server if tls else None, ca=ca) as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state",
                              ca=tls.ca if tls else None, workers=workers, extra=extra)
        emu_cpu0 = emu.cpu()
        keep = {"daemon_started", "startup_scan_done", "folder_failed", "folder_retrying", "folder_error", *EVENTS}
        with DaemonProcess(config, work / "daemon.log") as daemon:
            profiler = Profiler(daemon.pid, profile, gil=gil) if profile else None
            try:
                daemon.wait_count("startup_scan_done", 1, timeout, keep=keep, interval=0.002)
                cpu_at_scan, tracked_at_scan = daemon.cpu(), daemon.counts["run_tracked"]
                done = daemon.wait_count("run_tracked", n, timeout, keep=keep)
            finally:
                summary = profiler.stop() if profiler else None
            seconds = done - daemon.started_at
            user_sys = daemon.cpu_split()
            own_cpu = sum(user_sys)
            after_startup = (own_cpu - cpu_at_scan, n - tracked_at_scan)
            emu_cpu = emu.cpu() - emu_cpu0
            # one daemon_started per process (`processes` > 1: each with its share of workers)
            workers = sum(int(e.get("workers") or 0) for e in daemon.events if e.get("event") == "daemon_started")
            scan = daemon.first("startup_scan_done")
            startup = None
            if scan is not None:
                startup = _created(scan["timestamp"]) - daemon.started_at
        check, steady = _check_runs(emu, n)
        on_disk = tracked_count(folders)
        if on_disk != n:
            check = f"{on_disk}/{n} tracked markers; " + check
        retries = daemon.counts["folder_retrying"]
        if retries:
            check += f" ({retries} folder_retrying events)"
    return Throughput("daemon", latency, tls is not None, workers or None, n, seconds, steady, own_cpu,
                      emu_cpu, check, startup, after_startup, user_sys, summary, in_flight(daemon.events))


def sdk_run(n: int, latency: float, tls: Tls | None, ca: Path, *, timeout: float) -> Throughput:
    tag = f"tp-sdk-{int(latency * 1000)}ms-{'https' if tls else 'http'}"
    work = fresh_dir(WORK / tag)
    root = work / "root"
    small_runs(root, n)
    with Emulator(latency=latency, cert=tls.server if tls else None, ca=ca) as emu:
        env = {**os.environ, "NEXTMV_API_KEY": API_KEY, "NEXTMV_ENDPOINT": emu.url}
        if tls:
            env["REQUESTS_CA_BUNDLE"] = str(tls.ca)
        emu_cpu0 = emu.cpu()
        proc = subprocess.run([PYTHON, "-m", "bench.sdk_loop", "loop", "--root", str(root)],  # noqa: S603
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        emu_cpu = emu.cpu() - emu_cpu0
        if proc.returncode != 0 or not proc.stdout.strip():
            raise BenchError(f"the SDK loop failed ({proc.returncode}): {proc.stderr[-1500:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        check, steady = _check_runs(emu, n)
        if result["error_count"]:
            check = f"{result['error_count']} SDK errors, e.g. {result['errors'][0]}; " + check
    return Throughput("sdk", latency, tls is not None, None, n, result["seconds"], steady, result["cpu_seconds"],
                      emu_cpu, check)
