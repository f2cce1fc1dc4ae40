"""py-spy on the daemon while it works: collapsed stacks to a file, and a short text summary.

Only non-idle samples are recorded (py-spy's default: threads blocked in a syscall such as fsync
can still count), or with `gil` only the thread holding the GIL, i.e. where Python CPU time goes.
Profiling is best effort: without py-spy or ptrace permission the summary says so and the
measurement goes on.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.common import PYTHON

PY_SPY = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, output: Path, rate: int = 200, gil: bool = False) -> None:
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        if PY_SPY is None:
            self.error = "py-spy not installed"
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking",
             "--threads", *(["--gil"] if gil else []), "--output", str(output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        """Stop recording and return the summary (or why there is none)."""
        if self.proc is None:
            return f"no profile: {self.error}"
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        if not self.output.exists():
            return f"no profile: py-spy: {err.decode(errors='replace').strip()[-300:]}"
        return summarize(self.output)


def _frames(stack: str) -> list[str]:
    # Raw format: "thread (...);func (file:line);func (file:line) count"; keep "func (file)".
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        file = where.rsplit(":", 1)[0].rstrip(")")
        short = file.split("site-packages/")[-1].split("/lib/python3.11/")[-1]
        short = short.split("/work/main/")[-1]
        out.append(f"{name} ({short})")
    return out


def summarize(path: Path, top: int = 14) -> str:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        leaf[frames[-1]] += count
        for frame in set(frames[1:]):
            if "watcher/" in frame:
                inclusive[frame] += count
    if not total:
        return "no samples"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"{total} samples", "", "self time (innermost frame):"]
    lines += [f"  {pct(n)}  {name}" for name, n in leaf.most_common(top)]
    lines += ["", "inclusive time, watcher/ frames:"]
    lines += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)
