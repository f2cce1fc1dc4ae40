"""Adaptive concurrency against the emulator (issue 13, item 2): a rate-limited API (its token bucket
answers 429 with Retry-After) still gets every folder tracked exactly once, with the limit shrinking and
never above `workers`; `concurrency: fixed` keeps it at `workers`; a reload switches the mode. Outcomes
only, no timings."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import API_KEY, FAILED, marker, write_config, write_folder

from watcher.config import load_config
from watcher.daemon.concurrency import INITIAL
from watcher.daemon.service import Service
from watcher.fakecloud import FakeCloud

FILES: dict[str, str | bytes] = {"input.json": b'{"n": 1}', "output.json": b'{"v": 2}'}
WORKERS = 12


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(url: str, watched: Path, **overrides: Any) -> Service:
        overrides.setdefault("workers", WORKERS)
        # Backoff as in production, so that a folder throttled to the end waits as it would.
        overrides.setdefault("retry", {"backoff_initial_seconds": 1, "backoff_max_seconds": 60})
        path = write_config(tmp_path / "config.yaml", url, [(watched, "app")], tmp_path / "state", **overrides)
        service = Service(load_config(path), API_KEY, watch=False)
        made.append(service)
        return service

    yield make
    for service in made:
        service.shutdown()


class Sampler:
    """Records the limit and the folders in flight while the service works (the most of each)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limits: list[int] = []
        self.in_flight: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.limits.append(self.service.concurrency.limit())
            self.in_flight.append(len(self.service.index.in_flight()))


def api_calls(cloud: FakeCloud) -> tuple[int, int]:
    """(API calls, of which answered 429): requests to /v1, look-ups included, PUTs excluded."""
    by_endpoint = cloud.stats()["by_endpoint"]
    calls = throttled = 0
    for endpoint, statuses in by_endpoint.items():
        if endpoint == "put":
            continue
        calls += sum(statuses.values())
        throttled += statuses.get("429", 0)
    return calls, throttled


def assert_tracked_exactly_once(cloud: FakeCloud, folders: list[Path]) -> None:
    """One run per folder at the emulator, each folder with its tracked marker and none failed."""
    runs = cloud.runs("app")
    assert sorted(r.body["name"] for r in runs) == sorted(f.name for f in folders)
    assert all(marker(f) is not None and marker(f, FAILED) is None for f in folders)


def test_a_rate_limited_batch_is_tracked_exactly_once_and_the_limit_shrinks(
        cloud: FakeCloud, watched: Path, make_service: Callable[..., Service]) -> None:
    cloud.set_behaviour(rate_limit_per_second=30, rate_limit_burst=10)
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(30)]
    service = make_service(cloud.url, watched)

    with structlog.testing.capture_logs() as logs, Sampler(service) as sampler:
        service.start()
        assert service.run_until_idle(timeout=120)

    assert_tracked_exactly_once(cloud, folders)
    calls, throttled = api_calls(cloud)
    assert throttled > 0, "the limit was reached"
    assert throttled / calls < 0.25
    assert min(sampler.limits) < INITIAL           # it shrank ...
    assert max(sampler.limits) <= WORKERS          # ... and never exceeded workers
    assert max(sampler.in_flight) <= WORKERS
    # The 429's Retry-After held the API calls, which is no failure: no attempt was used.
    assert any(e["event"] == "api_held" for e in logs)
    assert not [e for e in logs if e["event"] in ("folder_failed", "api_paused")]   # throttled is no outage


def test_the_folders_in_flight_stay_within_the_limit_and_workers_without_a_rate_limit(
        cloud: FakeCloud, watched: Path, make_service: Callable[..., Service]) -> None:
    cloud.set_faults(latency_seconds=0.02)
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(60)]
    service = make_service(cloud.url, watched, workers=6)

    with Sampler(service) as sampler:
        service.start()
        assert service.run_until_idle(timeout=120)

    assert len(cloud.runs("app")) == len(folders)
    assert max(sampler.limits) <= 6
    assert max(sampler.in_flight) <= 6


def test_fixed_concurrency_is_workers_whatever_the_api_answers(
        cloud: FakeCloud, watched: Path, make_service: Callable[..., Service]) -> None:
    cloud.set_behaviour(rate_limit_per_second=30, rate_limit_burst=10)
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(15)]
    service = make_service(cloud.url, watched, concurrency="fixed")

    with Sampler(service) as sampler:
        service.start()
        assert service.run_until_idle(timeout=120)

    assert len(cloud.runs("app")) == len(folders)
    assert set(sampler.limits) == {WORKERS}
    assert service.status()["concurrency"]["limit"] == WORKERS
    assert api_calls(cloud)[1] > 0   # throttled, and still fixed


def test_a_reload_switches_between_adaptive_and_fixed(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: Callable[..., Service]) -> None:
    service = make_service(cloud.url, watched)
    service.start()
    assert service.status()["concurrency"] == {"mode": "adaptive", "limit": INITIAL, "workers": WORKERS,
                                               "in_flight": 0}
    write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app")], tmp_path / "state", workers=20,
                 concurrency="fixed")
    service.request_reload()
    service.run_until_idle(timeout=30)
    assert service.status()["concurrency"]["limit"] == 20

    write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app")], tmp_path / "state", workers=5)
    service.request_reload()
    service.run_until_idle(timeout=30)
    assert service.status()["concurrency"] == {"mode": "adaptive", "limit": 5, "workers": 5, "in_flight": 0}


def test_paced_api_calls_keep_429s_rare_and_track_a_batch_exactly_once(
        cloud: FakeCloud, watched: Path, make_service: Callable[..., Service]) -> None:
    """Issue 13's rate-limit case at default workers: limiting folders in flight cannot keep under 30
    calls/s at loopback latency; pacing the API calls does, so 429s stay rare (at most 10% of API calls)."""
    cloud.set_behaviour(rate_limit_per_second=30, rate_limit_burst=10)
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(150)]
    service = make_service(cloud.url, watched, workers=32)
    assert service.status()["api_rate_limit"] is None   # unlimited until the first 429

    with structlog.testing.capture_logs() as logs:
        service.start()
        assert service.run_until_idle(timeout=300)

    assert_tracked_exactly_once(cloud, folders)
    calls, throttled = api_calls(cloud)
    assert 0 < throttled <= 0.10 * calls
    paced = [e for e in logs if e["event"] == "api_pacing" and e["log_level"] == "info"]
    assert paced and all(e["reason"] == "throttled" and e["rate"] > 0 for e in paced)
    assert len(paced) <= throttled                      # once per decrease, never per call
    assert service.status()["api_rate_limit"] > 0       # still paced: no quiet period yet
    assert not [e for e in logs if e["event"] in ("folder_failed", "api_paused")]
