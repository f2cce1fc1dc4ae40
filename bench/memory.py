"""3. Memory: the daemon's peak RSS (VmHWM) tracking one large output file, then one large output
directory; the SDK's peak RSS tracking the same file read into memory.

The emulator keeps only the size and sha256 of anything above 1 MiB, so its own memory stays flat.
A 1 GiB artifact is over the daemon's default `api.max_upload_bytes` and the emulator's default upload
limit (both 500,000,000, Nextmv's documented 500 MB per file), so both are raised to `upload_limit(size)`
here: the measurement is of memory while tracking, not of the refusal.
The data is generated once (random bytes, incompressible) and hard-linked into each run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from bench.common import API_KEY, PYTHON, REPO, WORK, BenchError, fresh_dir
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import big_dir_run, big_file_run, big_json, big_parts


def upload_limit(size: int) -> int:
    """An upload limit, for the daemon and the emulator, that lets `size` bytes of data (a file, or an
    archive of parts adding up to it) through: never below the defaults, twice the data otherwise."""
    return max(500_000_000, 2 * size)


@dataclass
class Memory:
    who: str            # "daemon" or "sdk"
    what: str           # "file" or "dir"
    size: int
    peak_mb: float | None
    seconds: float
    own_cpu: float
    emu_cpu: float
    check: str


def daemon_peak(what: str, size: int, parts: int, *, timeout: float) -> Memory:
    work = fresh_dir(WORK / f"mem-daemon-{what}")
    root = work / "root"
    root.mkdir()
    if what == "file":
        big_file_run(root / "big-file", big_json(size))
    else:
        big_dir_run(root / "big-dir", big_parts(size, parts))
    limit = upload_limit(size)
    with Emulator(max_stored_bytes=1 << 20, max_upload_bytes=limit) as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state",
                              extra={"api": {"url": emu.url, "max_upload_bytes": limit}})
        emu_cpu0 = emu.cpu()
        with DaemonProcess(config, work / "daemon.log") as daemon:
            done = daemon.wait_count("run_tracked", 1, timeout, keep=None, interval=0.1)
            peak = daemon.peak_rss_mb()
            own_cpu = daemon.cpu()
            seconds = done - daemon.started_at
        emu_cpu = emu.cpu() - emu_cpu0
        runs = emu.runs()
    check = "ok"
    if len(runs) != 1:
        check = f"{len(runs)} runs at the emulator"
    else:
        out = runs[0]["artifacts"].get("output_upload_id", {})
        got = out.get("size", 0)
        if what == "file" and got != size:
            check = f"output uploaded {got} bytes, expected {size}"
        elif what == "dir" and got < size:
            check = f"archive of {got} bytes for {size} bytes of incompressible data"
        fmt = runs[0]["body"].get("configuration", {}).get("format", {}).get("output", {}).get("type")
        expected = "json" if what == "file" else "multi-file"
        if fmt != expected:
            check = f"output format {fmt}, expected {expected}"
    return Memory("daemon", what, size, peak, seconds, own_cpu, emu_cpu, check)


def sdk_peak(size: int, *, timeout: float) -> Memory:
    path = big_json(size)
    with Emulator(max_stored_bytes=1 << 20, max_upload_bytes=upload_limit(size)) as emu:
        env = {**os.environ, "NEXTMV_API_KEY": API_KEY, "NEXTMV_ENDPOINT": emu.url}
        emu_cpu0 = emu.cpu()
        proc = subprocess.run([PYTHON, "-m", "bench.sdk_loop", "big", "--file", str(path)],  # noqa: S603
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        emu_cpu = emu.cpu() - emu_cpu0
        if proc.returncode != 0 or not proc.stdout.strip():
            raise BenchError(f"the SDK failed ({proc.returncode}): {proc.stderr[-1500:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        runs = emu.runs()
    check = "ok" if len(runs) == 1 else f"{len(runs)} runs at the emulator"
    return Memory("sdk", "file", size, result["peak_rss_mb"], result["seconds"], result["cpu_seconds"], emu_cpu,
                  check)
