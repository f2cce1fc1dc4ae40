"""The series read from the daemon's own state at scrape time, never stored a second time.

Registered by `watcher.daemon.metrics.Metrics` (whose docstring lists every series):
`StatusCollector` reads the gauges from the status snapshot (`Health.status`), `OutcomesCollector`
reads folders_total from the outcome counts (`watcher.daemon.outcomes`), and `HealthCollector` reads
nextmv_watcher_healthy from the very answer /healthz gives (`Health.health`), so the gauge and the
endpoint cannot disagree and the rule lives only in health.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watcher.daemon.gate import GLOBAL

PREFIX = "nextmv_watcher_"
PENDING = ("queued", "in_flight", "retry_wait", "parked")
ALL_SCOPES = "all"
HEALTHY_DOC = "1 while /healthz answers 200 (the same rule, read at scrape time), else 0."

Status = Callable[[], Mapping[str, Any]]
Health = Callable[[], tuple[bool, Mapping[str, Any]]]


class OutcomesCollector:
    """folders_total, read from the daemon's outcome counts (`watcher.daemon.outcomes`) at scrape time."""

    def __init__(self, series: Callable[[], Mapping[tuple[str, str, str], int]]) -> None:
        self._series = series

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(f"{PREFIX}folders", "Run folders by application and outcome.",
                                    labels=["application_id", "outcome", "reason"])]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(f"{PREFIX}folders", "Run folders by application and outcome.",
                                     labels=["application_id", "outcome", "reason"])
        for (app, outcome, reason), count in sorted(self._series().items()):
            family.add_metric([app, outcome, reason], count)
        return [family]


class StatusCollector:
    """The gauges, read from the daemon's status snapshot at scrape time."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not call status().
        return self._families({}, describe=True)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._status(), describe=False)

    def _families(self, s: Mapping[str, Any], *, describe: bool) -> list[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=None if describe else value)

        age = s.get("oldest_pending_age_seconds")
        paused = GaugeMetricFamily(f"{PREFIX}api_paused", "1 per paused scope (an application, or all).",
                                   labels=["scope"])
        restarts = CounterMetricFamily(f"{PREFIX}observer_restarts", "Filesystem observer restarts.",
                                       value=None if describe else s.get("observer_restarts", 0))
        if not describe:
            scopes = sorted(ALL_SCOPES if scope == GLOBAL else str(scope) for scope in s.get("paused") or {})
            for scope in scopes:
                paused.add_metric([scope], 1)
            if not scopes:
                paused.add_metric([ALL_SCOPES], 0)
        present = GaugeMetricFamily(f"{PREFIX}watched_path_present",
                                    "1 while the watched path is watched, 0 while it is missing.", labels=["path"])
        if not describe:
            missing = s.get("watched_missing") or {}
            for path in s.get("watched") or ():
                present.add_metric([str(path)], 0 if path in missing else 1)
        pending = GaugeMetricFamily(f"{PREFIX}folders_pending",
                                    "Complete folders not tracked yet, by state (queued: due now).", labels=["state"])
        if not describe:
            folders = s.get("folders") or {}
            for state in PENDING:
                pending.add_metric([state], folders.get(state, 0))
        return [
            pending,
            gauge("queue_depth", "Folders due now, waiting for a worker.", s.get("queue_depth", 0)),
            gauge("in_flight", "Folders a worker is processing.", len(s.get("in_flight") or ())),
            gauge("concurrency_limit", "Folders that may be in flight now: the adaptive limit (at most workers), "
                  "or workers with concurrency: fixed.", (s.get("concurrency") or {}).get("limit", 0)),
            gauge("api_rate_limit", "API calls per second the daemon allows itself after the API answered 429 "
                  "(adaptive pacing); 0 while not paced.", s.get("api_rate_limit") or 0),
            gauge("oldest_pending_age_seconds",
                  "Seconds since the oldest pending folder was first seen complete (0 when none).",
                  0.0 if age is None else age),
            paused,
            restarts,
            present,
            gauge("incomplete_too_long", "Folders incomplete for longer than metrics.incomplete_warn_seconds.",
                  s.get("incomplete_too_long", 0)),
            gauge("up", "1 while the daemon runs.", 1),
            gauge("uptime_seconds", "Seconds since the daemon started.", s.get("uptime_seconds", 0.0)),
        ]


class HealthCollector:
    """nextmv_watcher_healthy: 1 when `health()` (the /healthz answer) says healthy, else 0."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not call health().
        return [GaugeMetricFamily(f"{PREFIX}healthy", HEALTHY_DOC)]

    def collect(self) -> Iterable[Metric]:
        healthy, _ = self._health()
        return [GaugeMetricFamily(f"{PREFIX}healthy", HEALTHY_DOC, value=1 if healthy else 0)]
