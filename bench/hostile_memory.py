"""6. Hostile memory: the daemon's peak RSS (VmHWM) in the worst case the file caps allow, the
figure behind `MemoryMax=` in systemd/nextmv-watcher.service (issue 8).

W run folders (W = the worker count, 64 by default in 2 processes, all in flight: `concurrency: fixed`) whose
`statistics.json`, `assets.json` and `metrics.json` are each a JSON document of exactly the cap (16 MiB, issue 8's
`files.max_json_bytes`) built to cost Python the most memory per byte: `[{},{},...]` (an empty
dict per 3 bytes, about 24 bytes of heap per byte of JSON) for statistics and assets, and
`{"0":{},"1":{},...}` for metrics, which must be an object for the folder to be valid (so that
the folder goes all the way: inspection parses all three, preparation parses statistics and
assets again and serializes them wrapped). They sit in a watched path listed first, so the
start-up scan queues them first and all W workers take one at once, while the scan goes on
through the backlog tree of `backlog.py` (100,000 folders, 10,000 pending) in a second watched
path. VmRSS is sampled every 50 ms to say when the peak came (before or after the scan finished).

The documents are generated once under bench/.work/data and hard-linked into each folder. When
the daemon accepts `files.max_json_bytes`, the config sets it to the document size, so the
documents are exactly at the cap whatever its default; before that key exists the daemon reads
them whole (what this measures today).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.common import APP, WORK, BenchError, fresh_dir, peak_rss_mb, status_kb
from bench.daemon import DaemonProcess, config_accepted, write_config
from bench.emulator import Emulator
from bench.folders import INPUT, MARKER, OUTPUT, backlog_tree, tracked_count

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "nextmv-watcher.service"
HOSTILE_FILES = ("statistics.json", "assets.json", "metrics.json")


@dataclass
class Hostile:
    folders: int                 # hostile folders = workers
    processes: int               # the daemon's `processes` (its figures added up over them)
    json_bytes: int              # size of each of the three documents
    cap_configured: bool         # files.max_json_bytes was set to json_bytes (the daemon knows the key)
    backlog_total: int
    backlog_pending: int
    peak_mb: float | None        # VmHWM at the end
    peak_at: float | None        # seconds from spawn to the highest VmRSS sample
    scan_done_at: float | None   # seconds from spawn to startup_scan_done
    hostile_done_at: float | None
    tracked: int                 # hostile folders tracked
    own_cpu: float
    check: str
    memory_max_mb: float | None  # MemoryMax= of the unit, for comparison


def worst_list(size: int, directory: Path = WORK / "data") -> Path:
    """`[{},{},...]` of exactly `size` bytes (>= 3, padded with spaces): the most Python objects per byte."""
    path = directory / f"hostile-list-{size}.json"
    if not (path.exists() and path.stat().st_size == size):
        body = b"[" + b",".join([b"{}"] * ((size - 2) // 3)) + b"]"
        _write_once(path, body[:-1] + b" " * (size - len(body)) + b"]")
    return path


def worst_object(size: int, directory: Path = WORK / "data") -> Path:
    """`{"0":{},"1":{},...}` (hexadecimal keys) of exactly `size` bytes: an object, as metrics must be."""
    path = directory / f"hostile-object-{size}.json"
    if not (path.exists() and path.stat().st_size == size):
        items: list[bytes] = []
        used = 2   # the braces
        while True:
            item = b'"%x":{}' % len(items)
            extra = len(item) + (1 if items else 0)
            if used + extra > size:
                break
            items.append(item)
            used += extra
        body = b"{" + b",".join(items) + b"}"
        _write_once(path, body[:-1] + b" " * (size - len(body)) + b"}")
    return path


def _write_once(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def hostile_folders(root: Path, n: int, size: int) -> list[Path]:
    """`n` complete run folders in `root` whose three optional JSON files are the worst case."""
    docs = {"statistics.json": worst_list(size), "assets.json": worst_list(size), "metrics.json": worst_object(size)}
    folders = []
    for i in range(n):
        folder = root / f"hostile-{i:02d}"
        folder.mkdir(parents=True)
        (folder / "input.json").write_bytes(INPUT)
        (folder / "output.json").write_bytes(OUTPUT)
        for name, doc in docs.items():
            os.link(doc, folder / name)
        (folder / MARKER).write_bytes(b"")
        folders.append(folder)
    return folders


def unit_memory_max_mb(unit: Path = UNIT) -> float | None:
    """MemoryMax= of the unit in MB (1,048,576 bytes), or None when it is not set as a size."""
    factors = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        lines = unit.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemoryMax="):
            value = line.partition("=")[2].strip()
            if value and value[-1].upper() in factors and value[:-1].isdigit():
                return int(value[:-1]) * factors[value[-1].upper()] / 2**20
            return int(value) / 2**20 if value.isdigit() else None
    return None


def measure(workers: int, json_bytes: int, backlog_total: int, backlog_pending: int, *, timeout: float,
            processes: int | None = None, log: Callable[[str], None] = print) -> Hostile:
    """`processes`: None for the daemon's default (2, or `workers` if fewer)."""
    count = processes if processes is not None else min(2, workers)
    backlog_root, _ = backlog_tree(backlog_total, backlog_pending, log)
    work = fresh_dir(WORK / "hostile-memory")
    hostile_root = work / "hostile"
    folders = hostile_folders(hostile_root, workers, json_bytes)
    with Emulator() as emu:
        def config(cap: bool) -> Path:
            extra: dict[str, object] = {"watch": [
                {"path": str(hostile_root), "application_id": APP},
                {"path": str(backlog_root), "application_id": APP}]}
            extra["concurrency"] = "fixed"   # the worst case: all W workers in flight at once
            if processes is not None:
                extra["processes"] = processes
            if cap:
                extra["files"] = {"max_json_bytes": json_bytes}
            return write_config(work / "config.yaml", url=emu.url, root=hostile_root, state_dir=work / "state",
                                workers=workers, extra=extra)

        cap_configured, _ = config_accepted(config(cap=True))
        path = config(cap=cap_configured)
        keep = {"startup_scan_done", "run_tracked", "folder_failed", "folder_error", "folder_invalid"}
        with DaemonProcess(path, work / "daemon.log") as daemon:
            highest, peak_at = 0, None
            deadline = time.monotonic() + timeout
            check = "ok"
            while True:
                daemon.poll(keep)
                rss = status_kb(daemon.pid, "VmRSS") or 0
                if rss > highest:
                    highest, peak_at = rss, time.time() - daemon.started_at
                done = [e for e in daemon.events if e.get("event") == "run_tracked"
                        and Path(str(e.get("folder", ""))).parent == hostile_root]
                scans = [e for e in daemon.events if e.get("event") == "startup_scan_done"]
                if len(done) >= workers and len(scans) >= count:   # each process scans for its share
                    break
                bad = [e for e in daemon.events if e.get("level") in ("error", "critical")
                       and Path(str(e.get("folder", ""))).parent == hostile_root]
                if bad:
                    check = f"a hostile folder failed: {bad[0]}"[:300]
                    break
                daemon.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"timed out after {timeout:.0f}s: {len(done)}/{workers} hostile folders "
                                     f"tracked; log tail:\n{daemon.tail()}")
                time.sleep(0.05)
            peak = peak_rss_mb(daemon.pid)
            own_cpu = daemon.cpu()
            scan_done_at = max((_event_at(e, daemon.started_at) or 0.0 for e in scans), default=None)
            hostile_done_at = max((_event_at(e, daemon.started_at) or 0.0 for e in done), default=None)
    tracked = tracked_count(folders)
    if check == "ok" and tracked != workers:
        check = f"{tracked}/{workers} hostile folders have a tracked marker"
    return Hostile(workers, count, json_bytes, cap_configured, backlog_total, backlog_pending, peak, peak_at,
                   scan_done_at, hostile_done_at, tracked, own_cpu, check, unit_memory_max_mb())


def _event_at(event: dict[str, object] | None, started_at: float) -> float | None:
    if not event or not isinstance(event.get("timestamp"), str):
        return None
    stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    return stamp - started_at
