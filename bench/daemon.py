"""The real daemon process (`python -m watcher run --config <generated yaml>`), and what it logs.

Its JSON events (stderr) go to a file that `DaemonProcess` tails incrementally, counting events
by name, so that waiting for "500 run_tracked" costs next to nothing while the daemon works.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench.common import API_KEY, APP, PYTHON, REPO, BenchError, cpu_seconds, cpu_split, peak_rss_mb, stop_process


def write_config(path: Path, *, url: str, root: Path, state_dir: Path, ca: Path | None = None,
                 workers: int | None = None, level: str = "info", extra: dict[str, Any] | None = None,
                 watch_extra: dict[str, Any] | None = None) -> Path:
    """A daemon config: marker mode (`DONE`), JSON logs; `workers` left to the default unless given.
    `extra` adds top-level keys, `watch_extra` keys of the one watched path."""
    config: dict[str, Any] = {
        "api": {"url": url},
        "state_dir": str(state_dir),
        "watch": [{"path": str(root), "application_id": APP, **(watch_extra or {})}],
        "completion": {"marker": "DONE"},
        "logging": {"format": "json", "level": level},
    }
    if ca is not None:
        config["api"]["ca_bundle"] = str(ca)
    if workers is not None:
        config["workers"] = workers
    config.update(extra or {})
    path.write_text(yaml.safe_dump(config))
    return path


def config_accepted(config: Path) -> tuple[bool, str]:
    """Whether the daemon accepts `config` (`nextmv-watcher check --offline`), and what it said."""
    proc = subprocess.run([PYTHON, "-m", "watcher", "check", "--offline", "--config", str(config)],  # noqa: S603
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "NEXTMV_API_KEY": API_KEY})
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


class DaemonProcess:
    """One daemon process (`env`: variables added to ours). `started_at` is the wall-clock time just
    before it was spawned."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.counts: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self._log: Any = None

    def __enter__(self) -> DaemonProcess:
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "NEXTMV_API_KEY": API_KEY, **self.env}
        self.started_at = time.time()
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            [PYTHON, "-m", "watcher", "run", "--config", str(self.config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log, env=env)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            stop_process(self.proc, timeout=40)
        finally:
            self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self, keep: set[str] | None = None) -> Counter[str]:
        """Read new log lines; count events by name; keep those named in `keep` (all when None)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            name = str(event.get("event", ""))
            self.counts[name] += 1
            if keep is None or name in keep or event.get("level") in ("error", "critical"):
                self.events.append(event)
        return self.counts

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"the daemon exited with code {self.proc.returncode}; log tail:\n{self.tail()}")

    def wait_count(self, name: str, count: int, timeout: float, *, keep: set[str] | None = None,
                   interval: float = 0.01, fail_on: str | None = "folder_failed") -> float:
        """Wait until `name` was logged `count` times; returns the wall-clock time it was seen."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.poll(keep)
            if counts[name] >= count:
                return time.time()
            if fail_on and counts[fail_on]:
                raise BenchError(f"the daemon logged {fail_on}: {self.first(fail_on)}")
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f}s: {counts[name]}/{count} {name} events; "
                                 f"events so far {dict(counts)}; log tail:\n{self.tail()}")
            time.sleep(interval)

    def first(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        return cpu_split(self.pid)

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.pid)
