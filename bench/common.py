"""Shared helpers: the work directory, bounded waits, /proc readings, the machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"          # git-ignored: generated trees, logs, certificates
PYTHON = sys.executable
API_KEY = "bench-key"
APP = "bench-app"
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A measurement could not be completed (timeout, a process died, a count did not match)."""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition` until truthy; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tree(pid: int) -> list[int]:
    """The process and its descendants (a daemon with `processes` > 1 is its supervisor and children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(raw[raw.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process (all its threads) and its descendants, live or reaped, in seconds."""
    user = system = 0
    for n, p in enumerate(tree(pid)):
        fields = _stat(p)
        if fields is None:
            continue
        user += int(fields[11]) + (int(fields[13]) if n == 0 else 0)     # the root's reaped children too
        system += int(fields[12]) + (int(fields[14]) if n == 0 else 0)
    return user / TICKS, system / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) and its descendants."""
    return sum(cpu_split(pid))


def status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS), added up over the
    process and its descendants (for VmHWM an upper bound of the peak: the peaks need not coincide)."""
    values = [_status_kb(p, key) for p in tree(pid)]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM), added up over the process and its descendants."""
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    memory_gb: float
    kernel: str
    python: str
    date: str

    def line(self) -> str:
        return (f"{self.cpu}, {self.cores} cores, {self.memory_gb:.0f} GB RAM; Linux {self.kernel}; "
                f"Python {self.python}; {self.date}")


def machine() -> Machine:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return Machine(cpu=cpu, cores=os.cpu_count() or 0, memory_gb=mem, kernel=platform.release(),
                   python=platform.python_version(),
                   date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def fresh_dir(path: Path) -> Path:
    """Empty `path` (which must lie under WORK) and return it."""
    assert WORK in path.parents, path
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)  # noqa: S603,S607 - fixed argv, our own tree
    path.mkdir(parents=True)
    return path
