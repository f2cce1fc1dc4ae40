"""A reference point, not a configuration: K daemons side by side, the most worker processes could give.

Each daemon is the real `nextmv-watcher run` process with its own watched path (N/K of the N small run
folders) and its own state directory, all against one emulator: no shared index, lock or view, so
nothing any multi-process design would add to coordinate them. Measured as a throughput run of the
daemon: runs/s from spawning the first process to the last folder's `run_tracked` in every log;
"steady" from the emulator's first to last run; CPU per run summed over the K processes after each
one's start-up scan; checked (N markers, N runs, N distinct names).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from bench.certs import Tls
from bench.common import WORK, BenchError, fresh_dir
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import small_runs, tracked_count
from bench.throughput import _check_runs


@dataclass
class SideBySide:
    k: int
    latency: float
    https: bool
    n: int
    seconds: float
    steady_rate: float | None
    cpu_after_startup: float      # CPU seconds of the K daemons after each one's start-up scan
    runs_after_startup: int
    emu_cpu: float
    check: str

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_per_run(self) -> float | None:
        return self.cpu_after_startup / self.runs_after_startup if self.runs_after_startup > 0 else None


def measure(n: int, latency: float, tls: Tls | None, ca: Path, k: int = 2, *, timeout: float) -> SideBySide:
    work = fresh_dir(WORK / f"side-by-side-{k}-{int(latency * 1000)}ms-{'https' if tls else 'http'}")
    share = n // k
    roots = [work / f"root{i}" for i in range(k)]
    folders = [f for i, root in enumerate(roots) for f in small_runs(root, share, prefix=f"d{i}-run")]
    with Emulator(latency=latency, cert=tls.server if tls else None, ca=ca) as emu:
        emu_cpu0 = emu.cpu()
        with contextlib.ExitStack() as stack:
            daemons = [stack.enter_context(DaemonProcess(
                write_config(work / f"config{i}.yaml", url=emu.url, root=root, state_dir=work / f"state{i}",
                             ca=tls.ca if tls else None), work / f"daemon{i}.log")) for i, root in enumerate(roots)]
            started = min(d.started_at for d in daemons)
            at_scan: list[tuple[float, int] | None] = [None] * k
            deadline = time.monotonic() + timeout
            while True:
                counts = [d.poll({"startup_scan_done", "folder_failed"}) for d in daemons]
                for i, (d, c) in enumerate(zip(daemons, counts, strict=True)):
                    if at_scan[i] is None and c["startup_scan_done"]:
                        at_scan[i] = (d.cpu(), c["run_tracked"])
                    if c["folder_failed"]:
                        raise BenchError(f"daemon {i} logged folder_failed: {d.first('folder_failed')}")
                    d.check_alive()
                if all(c["run_tracked"] >= share for c in counts):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"timed out after {timeout:.0f}s: {[c['run_tracked'] for c in counts]} "
                                     f"of {share} tracked by each daemon")
                time.sleep(0.005)
            seconds = time.time() - started
            scans = [s if s is not None else (0.0, 0) for s in at_scan]
            cpu_after = sum(d.cpu() - s[0] for d, s in zip(daemons, scans, strict=True))
            runs_after = k * share - sum(s[1] for s in scans)
        emu_cpu = emu.cpu() - emu_cpu0
        check, steady = _check_runs(emu, k * share)
    on_disk = tracked_count(folders)
    if on_disk != k * share:
        check = f"{on_disk}/{k * share} tracked markers; " + check
    return SideBySide(k, latency, tls is not None, k * share, seconds, steady, cpu_after, runs_after, emu_cpu, check)
