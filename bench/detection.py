"""2. Detection latency: marker written -> `POST .../runs` recorded by the emulator (same clock).

The daemon runs first on an empty watched path. Then folders are written one by one: mkdir,
input.json, output.json, the marker; the marker's write time is taken right after it is closed;
then a small gap. The run's `created_at` at the emulator, minus that time, is the latency (it
includes the uploads before the POST). No injected latency, HTTP.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.common import WORK, fresh_dir
from bench.daemon import DaemonProcess, config_accepted, write_config
from bench.emulator import Emulator
from bench.folders import INPUT, MARKER, OUTPUT

# Where a polling switch might live, in the order tried: (top-level keys, keys of the watched path).
# The daemon's own `check --offline` decides which it accepts; its default interval is kept.
POLLING_KEYS: list[tuple[dict[str, object], dict[str, object]]] = [
    ({}, {"polling": True}),
    ({"polling": True}, {}),
]


@dataclass
class Detection:
    mode: str                      # "inotify" or "polling" (at the daemon's default poll interval)
    supported: bool
    n: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    emu_cpu: float = 0.0
    own_cpu: float = 0.0
    note: str = ""


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def _write_folder(folder: Path) -> float:
    os.mkdir(folder)
    for name, data in (("input.json", INPUT), ("output.json", OUTPUT)):
        with open(folder / name, "wb") as f:
            f.write(data)
    with open(folder / MARKER, "wb"):
        pass
    return time.time()


def polling_keys(work: Path, url: str) -> tuple[tuple[dict[str, object], dict[str, object]] | None, str]:
    """The config keys that switch the daemon to polling, or None and the daemon's answer."""
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    answer = ""
    for extra, watch_extra in POLLING_KEYS:
        config = write_config(work / "probe.yaml", url=url, root=probe, state_dir=work / "probe-state",
                              extra=extra, watch_extra=watch_extra)
        ok, answer = config_accepted(config)
        if ok:
            return (extra, watch_extra), answer
    return None, answer


def measure(n: int, gap: float, mode: str, *, timeout: float) -> Detection:
    work = fresh_dir(WORK / f"detect-{mode}")
    root = work / "root"
    root.mkdir()
    with Emulator() as emu:
        extra: dict[str, object] = {}
        watch_extra: dict[str, object] = {}
        if mode == "polling":
            found, answer = polling_keys(work, emu.url)
            if found is None:
                last = (answer.splitlines()[-1] if answer else "").strip(" -").split(" (known")[0]
                return Detection(mode, False, note=f"not supported yet (`nextmv-watcher check` on `polling: true`: "
                                                   f"{last})")
            extra, watch_extra = found
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state",
                              extra=extra, watch_extra=watch_extra)
        emu_cpu0 = emu.cpu()
        with DaemonProcess(config, work / "daemon.log") as daemon:
            daemon.wait_count("startup_scan_done", 1, 30, keep=set())
            time.sleep(0.5)
            written: dict[str, float] = {}
            for i in range(n):
                name = f"d-{i:04d}"
                written[name] = _write_folder(root / name)
                time.sleep(gap)
                daemon.poll(keep=set())
            note = ""
            try:
                daemon.wait_count("run_tracked", n, timeout, keep=set())
            except Exception as exc:  # noqa: BLE001 - a partial result is still reported
                note = f"only {daemon.counts['run_tracked']}/{n} tracked within {timeout:.0f}s: {str(exc)[:200]}"
            own_cpu = daemon.cpu()
        emu_cpu = emu.cpu() - emu_cpu0
        runs = emu.runs()
    latencies = []
    for run in runs:
        name = run["body"].get("name")
        if name in written:
            created = datetime.fromisoformat(run["created_at"].replace("Z", "+00:00")).timestamp()
            latencies.append((created - written[name]) * 1000)
    latencies.sort()
    if not latencies:
        return Detection(mode, True, 0, note=note or "no runs recorded", emu_cpu=emu_cpu, own_cpu=own_cpu)
    if len(runs) != len(latencies) or len(latencies) != n:
        note = (note + f"; {len(runs)} runs for {n} folders").lstrip("; ")
    return Detection(mode, True, len(latencies), _percentile(latencies, 50), _percentile(latencies, 99),
                     latencies[-1], emu_cpu, own_cpu, note)
