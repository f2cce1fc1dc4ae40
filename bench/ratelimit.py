"""The rate-limit case: N small run folders present at start-up, the daemon at its defaults, and an
emulator whose API allows `limit` calls per second (a token bucket of the emulator's default burst, 10;
a call without a token answers 429 with Retry-After), as a real API's limit would.

Measured: runs/s from spawning the daemon to the N-th attempt ended (tracked or failed) and steady (first
to last run created at the emulator); the share of API calls answered 429, where API calls are the
requests to /v1 (every emulator endpoint but the presigned `put`, look-ups included) up to that moment;
the folders marked failed (`folder_failed` events and `.nextmv-failed.json` markers). `folder_retrying`
events are counted, not a failure. Checked as every throughput run: N markers, N runs, N distinct names.

For the story behind a figure: the 429s over time (the emulator's counters read every second), the
daemon's concurrency limit and API pacing over time (its /metrics every 0.5 s, `bench.concurrency`)
and its `api_pacing` events.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from bench.common import WORK, BenchError, fresh_dir
from bench.concurrency import EVENTS, InFlight, MetricsProbe, event_time, in_flight
from bench.daemon import DaemonProcess, write_config
from bench.emulator import Emulator
from bench.folders import small_runs, tracked_count
from bench.throughput import _check_runs
from watcher.fakecloud import ENDPOINTS

API_ENDPOINTS = ENDPOINTS - {"put"}   # the /v1 endpoints; "put" is the presigned upload (S3 in reality)
API_CALLS_PER_RUN = 3                 # two upload URLs and the POST
FAILED = ".nextmv-failed.json"
KEEP = {"daemon_started", "folder_failed", "folder_retrying", "folder_error", "api_pacing", *EVENTS}


@dataclass(frozen=True)
class ApiCounts:
    calls: int        # requests to /v1 endpoints, whatever the answer
    throttled: int    # of which answered 429
    puts: int         # presigned PUTs (not API calls; for the record)


def api_counts(stats: dict[str, Any]) -> ApiCounts:
    """API calls and 429s from the emulator's /_fake/stats `by_endpoint` (status -> count per endpoint)."""
    by = stats.get("by_endpoint", {})
    calls = sum(n for e in API_ENDPOINTS for n in by.get(e, {}).values())
    throttled = sum(by.get(e, {}).get("429", 0) for e in API_ENDPOINTS)
    return ApiCounts(calls, throttled, sum(by.get("put", {}).values()))


@dataclass
class RateLimited:
    n: int
    limit: float                  # API calls per second the emulator allows
    seconds: float                # spawn to the N-th attempt ended
    steady_rate: float | None
    api: ApiCounts
    failed_events: int
    failed_markers: int
    retrying: int                 # folder_retrying events (not a failure)
    check: str
    own_cpu: float
    emu_cpu: float
    flight: InFlight | None
    peak_limit: float | None      # the daemon's concurrency limit, highest sample
    timeline: str                 # 429s over time, for a note
    limit_series: str             # the concurrency limit over time, for a note
    pacing: str                   # the daemon's api_pacing events, for a note

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def throttled_share(self) -> float:
        return self.api.throttled / self.api.calls if self.api.calls else 0.0

    @property
    def failed(self) -> int:
        return max(self.failed_events, self.failed_markers)

    def target_rate(self) -> float:
        """90% of the runs per second the limit allows at API_CALLS_PER_RUN calls a run."""
        return 0.9 * self.limit / API_CALLS_PER_RUN


def _timeline(samples: list[tuple[float, ApiCounts]], every: float = 5.0) -> str:
    """'0-5 s: 12% of 160, 5-10 s: ...': the share of API calls answered 429 per `every` seconds."""
    out: list[str] = []
    last_at, last = 0.0, ApiCounts(0, 0, 0)
    for at, counts in samples:
        if at - last_at >= every or (at, counts) == samples[-1]:
            calls, throttled = counts.calls - last.calls, counts.throttled - last.throttled
            if calls:
                out.append(f"{last_at:.0f}-{at:.0f} s: {100 * throttled / calls:.0f}% of {calls}")
            last_at, last = at, counts
    return ", ".join(out)


def _pacing(events: list[dict[str, Any]], started: float) -> str:
    out = []
    for e in events:
        if e.get("event") == "api_pacing":
            at = event_time(e)
            when = f"{at - started:.1f} s" if at is not None else "?"
            out.append(f"{when}: {e.get('reason')} rate {e.get('rate')}")
    return "; ".join(out[:12]) + (f"; ... ({len(out)} in all)" if len(out) > 12 else "") if out else "none"


def measure(n: int, limit: float, *, timeout: float) -> RateLimited:
    work = fresh_dir(WORK / f"ratelimit-{limit:g}")
    root = work / "root"
    folders = small_runs(root, n)
    with Emulator(rate_limit=limit) as emu:
        config = write_config(work / "config.yaml", url=emu.url, root=root, state_dir=work / "state",
                              extra={"metrics": {"listen": "127.0.0.1:0"}})
        emu_cpu0 = emu.cpu()
        samples: list[tuple[float, ApiCounts]] = []
        with DaemonProcess(config, work / "daemon.log") as daemon, \
                MetricsProbe(work / "daemon.log", interval=0.5) as probe:
            deadline = time.monotonic() + timeout
            next_stats = 0.0
            while True:
                counts = daemon.poll(KEEP)
                if counts["run_tracked"] + counts["folder_failed"] >= n:
                    done = time.time()
                    break
                daemon.check_alive()
                now = time.monotonic()
                if now > deadline:
                    raise BenchError(f"timed out after {timeout:.0f}s: {counts['run_tracked']}/{n} run_tracked, "
                                     f"{counts['folder_failed']} folder_failed; log tail:\n{daemon.tail()}")
                if now >= next_stats:
                    samples.append((time.time() - daemon.started_at, api_counts(emu.stats())))
                    next_stats = now + 1.0
                time.sleep(0.02)
            stats = emu.stats()
            samples.append((done - daemon.started_at, api_counts(stats)))
            own_cpu = daemon.cpu()
        emu_cpu = emu.cpu() - emu_cpu0
        check, steady = _check_runs(emu, n)
    on_disk = tracked_count(folders)
    if on_disk != n:
        check = f"{on_disk}/{n} tracked markers; " + check
    failed_markers = sum(1 for f in folders if os.path.exists(os.path.join(f, FAILED)))
    return RateLimited(
        n=n, limit=limit, seconds=done - daemon.started_at, steady_rate=steady, api=api_counts(stats),
        failed_events=daemon.counts["folder_failed"], failed_markers=failed_markers,
        retrying=daemon.counts["folder_retrying"], check=check, own_cpu=own_cpu, emu_cpu=emu_cpu,
        flight=in_flight(daemon.events), peak_limit=probe.peak("concurrency_limit"), timeline=_timeline(samples),
        limit_series=probe.series("concurrency_limit"), pacing=_pacing(daemon.events, daemon.started_at))
