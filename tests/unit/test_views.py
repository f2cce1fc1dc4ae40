"""views: several processes' status, metrics and health seen as one daemon's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from watcher.daemon.metrics import Metrics
from watcher.daemon.views import merge_health, merge_metrics, merge_status


def status(queued: int, age: float | None, *, alive: bool = True,
           failures: list[str] | None = None) -> dict[str, object]:
    return {"state": "running", "folders": {"queued": queued, "in_flight": 1}, "queue_depth": queued,
            "oldest_pending_age_seconds": age, "observer_alive": alive, "recent_failures": failures or [],
            "concurrency": {"mode": "adaptive", "limit": 8, "workers": 16}, "api_held_seconds": 0.5}


def test_statuses_add_up_as_one_daemon() -> None:
    merged = merge_status([status(3, 12.5, failures=["a"]), status(4, None, alive=False, failures=["b"])])
    assert merged["folders"] == {"queued": 7, "in_flight": 2} and merged["queue_depth"] == 7
    assert merged["oldest_pending_age_seconds"] == 12.5, "the oldest of all, not a sum"
    assert merged["api_held_seconds"] == 0.5
    assert merged["observer_alive"] is False, "one process's dead observer is the daemon's"
    assert merged["recent_failures"] == ["a", "b"]
    assert merged["concurrency"] == {"mode": "adaptive", "limit": 16, "workers": 32}
    assert merged["state"] == "running"


def test_health_is_every_process_healthy() -> None:
    assert merge_health([(True, {"reasons": []}), (True, {"reasons": []})]) == (True, {"reasons": []})
    ok, details = merge_health([(True, {"reasons": []}), (False, {"reasons": ["observer not answering"]})])
    assert not ok and details["reasons"] == ["observer not answering"]


def metrics_text(queued: int, healthy: bool, refused: int) -> str:
    folders = {"queued": queued, "in_flight": 0, "retry_wait": 0, "parked": 0}
    m = Metrics(lambda: {"folders": folders, "queue_depth": queued, "in_flight": [], "concurrency": None,
                         "oldest_pending_age_seconds": 5.0 * queued, "paused": {}, "observer_restarts": 0,
                         "watched": [], "watched_missing": [], "incomplete_too_long": 0, "uptime_seconds": 1.0,
                         "api_rate_limit": None},
                lambda: {("app-1", "tracked", "posted"): queued}, lambda: (healthy, {}))
    for _ in range(refused):
        m.connection_refused()
    return m.render().decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_metrics_sum_counters_and_pending_and_keep_the_worst_of_health_and_age() -> None:
    merged = samples(merge_metrics([metrics_text(2, True, 1), metrics_text(3, False, 2)]))
    assert merged[("nextmv_watcher_folders_pending", (("state", "queued"),))] == 5
    assert merged[("nextmv_watcher_metrics_connections_refused_total", ())] == 3
    assert merged[("nextmv_watcher_healthy", ())] == 0, "one unhealthy process: the daemon is not healthy"
    assert merged[("nextmv_watcher_oldest_pending_age_seconds", ())] == 15.0, "the oldest, not a sum"
    assert [v for (name, _), v in merged.items() if name == "nextmv_watcher_build_info"] == [1], "one version"
