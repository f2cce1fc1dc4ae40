"""One daemon's view from several processes' (`processes` > 1): status, metrics and health merged.

Each process answers for its own folders; the supervisor asks every one of them and shows the sum, as
one daemon would: counts and counters add up; the oldest age, the longest hold and the uptime are the
most any process has; a process that is not healthy makes the daemon not healthy; lists are joined.

- `merge_status`: `status --json` answers, merged key by key (numbers summed, or the highest for the
  keys in `HIGHEST`; booleans all true; strings kept, different ones joined; lists joined;
  objects merged the same way).
- `merge_metrics`: Prometheus text, each sample summed across processes, except the gauges in
  `GAUGE_RULES` (highest or lowest); histograms and counters sum bucket by bucket.
- `merge_health`: (healthy, details) answers: healthy when every one is.
Pure: the supervisor does the asking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "nextmv_watcher_"
# Status keys whose merged value is the highest, not the sum.
HIGHEST = frozenset({"uptime_seconds", "oldest_pending_age_seconds", "api_held_seconds", "since",
                     "api_rate_limit"})   # the pace and the hold are shared: each process reports the same
# Gauges that do not add up across processes: the highest (an age, a flag) or the lowest (health).
GAUGE_RULES: dict[str, Callable[[Iterable[float]], float]] = {
    f"{PREFIX}oldest_pending_age_seconds": max, f"{PREFIX}api_paused": max, f"{PREFIX}uptime_seconds": max,
    f"{PREFIX}build_info": max, f"{PREFIX}api_rate_limit": max, f"{PREFIX}healthy": min, f"{PREFIX}up": min,
    f"{PREFIX}watched_path_present": min, "process_start_time_seconds": min, "process_max_fds": min,
}


def merge_status(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged = _merge(list(answers), "")
    return merged if isinstance(merged, dict) else {}


def merge_health(answers: Sequence[tuple[bool, dict[str, Any]]]) -> tuple[bool, dict[str, Any]]:
    details = _merge([d for _, d in answers], "")
    return all(ok for ok, _ in answers), details if isinstance(details, dict) else {}


def _merge(values: list[Any], key: str) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, bool) for v in present):
        return all(present)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        total = max(present) if key in HIGHEST else sum(present)
        return round(total, 3) if isinstance(total, float) else total
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _merge([v.get(k) for v in present], k) for k in keys}
    if all(isinstance(v, list) for v in present):
        return [item for v in present for item in v]
    if all(isinstance(v, str) for v in present):
        return ", ".join(dict.fromkeys(present))   # "running", or "running, draining" while one drains
    return present


def merge_metrics(texts: Sequence[str]) -> bytes:
    """The processes' /metrics, merged into one exposition in the same text format."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                samples.setdefault((sample.name, tuple(sorted(sample.labels.items()))), []).append(sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families, values))
    return generate_latest(registry)


class _Merged:
    def __init__(self, families: dict[str, Metric],
                 values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]]) -> None:
        self.families = families
        self.values = values

    def collect(self) -> Iterable[Metric]:
        for name, family in self.families.items():
            merged = Metric(name, family.documentation, family.type, family.unit)
            rule = GAUGE_RULES.get(name, sum) if family.type == "gauge" else sum
            for (sample, labels), found in self.values[name].items():
                merged.add_sample(sample, dict(labels), rule(found))
            yield merged
