"""The concurrency a daemon run actually reached, for the W/(RxL) rows and the rate-limit case.

Two readings, neither of which needs the daemon to change:

- `in_flight(events)`: folders in flight over time, from the daemon's own log. A folder is in flight
  from its `folder_complete` event (logged once the worker holds its claim and starts the uploads) to
  the event that ends the attempt (`run_tracked`, or a verdict such as `folder_retrying`); both carry
  the folder and a microsecond timestamp. Costs the daemon nothing, so it is used in every throughput run.
- `MetricsProbe`: samples the daemon's `/metrics` (`nextmv_watcher_concurrency_limit`, `..._in_flight`,
  `..._api_rate_limit`) every `interval` seconds from a thread; each scrape costs the daemon a little
  CPU, so only the rate-limit case uses it, where the limit and the pacing over time explain a figure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

START = "folder_complete"
# Events that end an attempt (watcher/daemon/worker.py, verdict.py): the folder is no longer in flight.
ENDS = frozenset({"run_tracked", "folder_retrying", "run_lookup_inconclusive", "folder_parked", "folder_failed",
                  "folder_waiting", "folder_claim_lost", "state_error", "folder_error"})
EVENTS = frozenset({START, *ENDS})   # the events `in_flight` needs kept from the log
PREFIX = "nextmv_watcher_"
GAUGES = ("concurrency_limit", "in_flight", "api_rate_limit")


@dataclass(frozen=True)
class InFlight:
    peak: int          # the most folders in flight at once
    mean: float        # time-weighted mean from the first attempt's start to the last attempt's end
    attempts: int      # attempts counted (started and ended)
    timeline: str = ""  # "0s: 8, 2s: 13, ...": the most in flight in each `every`-second bucket from the first start


def event_time(event: dict[str, Any]) -> float | None:
    text = event.get("timestamp")
    if not isinstance(text, str):
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def in_flight(events: Iterable[dict[str, Any]], every: float = 2.0) -> InFlight | None:
    """Folders in flight, from `folder_complete` to the event ending that folder's attempt; None if none."""
    opened: dict[str, float] = {}
    steps: list[tuple[float, int]] = []
    for event in events:
        name, folder, at = event.get("event"), event.get("folder"), event_time(event)
        if not isinstance(folder, str) or at is None:
            continue
        if name == START:
            opened[folder] = at
        elif name in ENDS and folder in opened:
            steps += [(opened.pop(folder), 1), (at, -1)]
    if not steps:
        return None
    steps.sort(key=lambda s: (s[0], s[1]))   # an end before a start at the same instant
    level = peak = 0
    area = 0.0
    first = last = steps[0][0]
    buckets: dict[int, int] = {}
    for at, delta in steps:
        area += level * (at - last)
        level += delta
        peak = max(peak, level)
        last = at
        bucket = int((at - first) / every)
        buckets[bucket] = max(buckets.get(bucket, 0), level)
    span = steps[-1][0] - first
    timeline = ", ".join(f"{b * every:g}s: {v}" for b, v in sorted(buckets.items()))
    return InFlight(peak, area / span if span > 0 else float(peak), len(steps) // 2, timeline)


@dataclass
class Sample:
    at: float                  # seconds since the probe started
    values: dict[str, float]   # gauge name (without the prefix) -> value


class MetricsProbe:
    """Samples the daemon's /metrics every `interval` s once its `metrics_listening` event shows the port
    (the daemon must be configured with `metrics.listen: 127.0.0.1:0`). Use as a context manager."""

    def __init__(self, log_path: Path, interval: float = 0.5) -> None:
        self.log_path = log_path
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> MetricsProbe:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="metrics-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def peak(self, gauge: str) -> float | None:
        values = [s.values[gauge] for s in self.samples if gauge in s.values]
        return max(values) if values else None

    def series(self, gauge: str, every: float = 2.0) -> str:
        """'t=0s: 8, t=2s: 12, ...': the gauge about every `every` seconds, for a note."""
        out, next_at = [], 0.0
        for s in self.samples:
            if gauge in s.values and s.at >= next_at:
                out.append(f"{s.at:.0f}s: {s.values[gauge]:g}")
                next_at = s.at + every
        return ", ".join(out)

    def _port(self) -> int | None:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            for line in f:
                if b'"metrics_listening"' in line:
                    with contextlib.suppress(ValueError):
                        port = json.loads(line).get("port")
                        return port if isinstance(port, int) else None
        return None

    def _run(self) -> None:
        port = None
        while port is None and not self._stop.wait(0.05):
            port = self._port()
        conn: http.client.HTTPConnection | None = None
        while port is not None and not self._stop.is_set():
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
                self.samples.append(Sample(time.monotonic() - self._started, parse(text)))
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()


def parse(text: str) -> dict[str, float]:
    """The unlabelled GAUGES from a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        gauge = name.removeprefix(PREFIX)
        if name.startswith(PREFIX) and gauge in GAUGES:
            with contextlib.suppress(ValueError):
                values[gauge] = float(rest.split()[0])
    return values
