"""The daemon's lifecycle in-process: a real Service with a real inotify observer on tmp_path,
against the emulator on loopback. Folders are written after start, so detection is the
observer's (and the start-up scan's for folders written before)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import API_KEY, FAILED, marker, wait_for, write_config, write_folder

from watcher.cloud.client import NextmvClient
from watcher.config import load_config
from watcher.daemon.gate import GLOBAL
from watcher.daemon.notify import Notifier
from watcher.daemon.service import Service, State
from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import Intent, Journal, StateStore

INPUT = b'{"stops": [1, 2, 3]}'
OUTPUT = b'{"solution": 7}'
FILES: dict[str, str | bytes] = {"input.json": INPUT, "output.json": OUTPUT}
MAX_ATTEMPTS = 10   # write_config's retry.max_attempts

ServiceFactory = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """make_service(cloud_url, [(path, app)], api_key=..., **config overrides) -> a started Service.

    Every service is shut down at teardown, and every thread it started must have ended."""
    made: list[Service] = []
    threads_before = set(threading.enumerate())

    def make(url: str, watched: list[tuple[Path, str]], api_key: str = API_KEY, **overrides: Any) -> Service:
        path = write_config(tmp_path / f"config-{len(made)}.yaml", url, watched, tmp_path / "state", **overrides)
        service = Service(load_config(path), api_key)
        made.append(service)
        service.start()
        return service

    yield make
    for service in made:
        service.shutdown()
        assert service.state is State.STOPPED
    wait_for(lambda: not live_threads_except(threads_before), 10, "the services' threads to end")


def live_threads_except(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive()]


def tracked(folders: list[Path]) -> bool:
    return all(marker(f) is not None for f in folders)


def none_failed(folders: list[Path]) -> bool:
    return all(marker(f, FAILED) is None for f in folders)


def settled(service: Service) -> bool:
    """Nothing queued and nothing in flight (parked folders are neither)."""
    return len(service.index) == 0 and not service.index.in_flight()


def test_folders_are_tracked_once_each(cloud: FakeCloud, watched: Path, make_service: ServiceFactory) -> None:
    early = write_folder(watched, "early", FILES)          # found by the start-up scan
    service = make_service(cloud.url, [(watched, "app-1")])
    assert service.state is State.RUNNING
    late = [write_folder(watched, f"late-{i}", FILES) for i in range(3)]   # found by the observer
    incomplete = write_folder(watched, "incomplete", {"input.json": INPUT}, marker=None)

    assert service.run_until_idle(timeout=20)
    folders = [early, *late]
    assert tracked(folders)
    runs = cloud.runs("app-1")
    assert sorted(r.body["name"] for r in runs) == sorted(f.name for f in folders)
    assert {marker(f)["run_id"] for f in folders} == {r.run_id for r in runs}  # type: ignore[index]
    assert marker(incomplete) is None
    assert service.outcomes.totals()["tracked"] == 4

    (incomplete / "output.json").write_bytes(OUTPUT)
    (incomplete / "DONE").touch()
    wait_for(lambda: marker(incomplete), 20, "the completed folder tracked")
    assert len(cloud.runs()) == 5


def test_an_auth_outage_fails_nothing_and_resumes_when_the_key_file_is_rewritten(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    cloud.set_api_keys(["rotated-key-42"])          # the key we hold is revoked
    with structlog.testing.capture_logs() as events:
        service = make_service(cloud.url, [(watched, "app-1")], api={"key_file": str(key_file)})
        folders = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]

        wait_for(lambda: service.gate.blocked("app-1") is not None, 20, "the API paused")
        wait_for(lambda: settled(service), 20, "every folder parked")
        pause = service.gate.pauses()[GLOBAL]
        assert pause.reason == "auth"
        assert none_failed(folders)
        assert cloud.runs() == []
        assert [e for e in events if e["event"] == "api_paused"] == [
            e for e in events if e["event"] == "api_paused" and e["reason"] == "auth"]
        assert len([e for e in events if e["event"] == "api_paused"]) == 1, "one clear error, not one per folder"

        key_file.write_text("rotated-key-42\n")      # the operator installs the new key
        assert service.run_until_idle(timeout=20)
    assert tracked(folders)
    assert none_failed(folders)
    assert len(cloud.runs("app-1")) == 3
    assert any(e["event"] == "api_resumed" for e in events)
    for f in folders:
        assert StateStore(tmp_path / "state").journal(f).attempts == 0


def test_an_unknown_application_pauses_only_that_application(tmp_path: Path, make_service: ServiceFactory) -> None:
    good_root, bad_root = tmp_path / "good", tmp_path / "bad"
    good_root.mkdir()
    bad_root.mkdir()
    with FakeCloud(api_keys=[API_KEY], applications=["good"]) as fake:
        service = make_service(fake.url, [(good_root, "good"), (bad_root, "missing-app")])
        bad = [write_folder(bad_root, f"b-{i}", FILES) for i in range(2)]
        good = [write_folder(good_root, f"g-{i}", FILES) for i in range(3)]

        wait_for(lambda: tracked(good), 20, "the good application's folders tracked")
        wait_for(lambda: service.gate.blocked("missing-app") is not None and settled(service), 20,
                 "the unknown application paused")
        pauses = service.gate.pauses()
        assert set(pauses) == {"missing-app"}
        assert pauses["missing-app"].reason == "application_not_found"
        assert service.gate.blocked("good") is None
        assert none_failed(bad)
        assert all(marker(f) is None for f in bad)
        assert [r.application_id for r in fake.runs()] == ["good"] * 3

        # More work for the good application still flows while the other stays paused.
        late = write_folder(good_root, "g-late", FILES)
        wait_for(lambda: marker(late), 20, "a later folder of the good application tracked")
        assert none_failed(bad)
        service.shutdown()


def test_a_transient_storm_burns_no_attempts_and_everything_is_tracked_after(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory) -> None:
    cloud.set_faults(error_rate=1.0)
    service = make_service(cloud.url, [(watched, "app-1")])
    folders = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]

    wait_for(lambda: service.gate.blocked("app-1") is not None, 30, "the circuit breaker opened")
    wait_for(lambda: settled(service), 30, "every folder parked")
    assert service.gate.pauses()[GLOBAL].reason == "unreachable"
    store = StateStore(tmp_path / "state")
    assert none_failed(folders)
    attempts = [store.journal(f).attempts for f in folders]
    assert max(attempts) < MAX_ATTEMPTS, attempts
    assert cloud.runs() == []

    cloud.set_faults(error_rate=0.0)
    assert service.run_until_idle(timeout=30)
    assert tracked(folders)
    assert none_failed(folders)
    assert len(cloud.runs("app-1")) == 3


def seed_runs(url: str, application_id: str, count: int) -> None:
    """`count` runs in the application that are none of ours."""
    client = NextmvClient(url, API_KEY, connect_timeout=2, read_timeout=5)
    try:
        for i in range(count):
            target = client.new_upload(application_id)
            client.put_file(target, lambda: io.BytesIO(b"{}"), 2)
            client.create_run(application_id, {"upload_id": target.upload_id, "name": f"someone else's {i}",
                                               "result": {"status": "failed"}}, None)
    finally:
        client.close()


def test_a_folder_whose_look_up_is_inconclusive_waits_is_shown_and_is_never_posted_again(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory) -> None:
    """The run list is longer than the look-up may read (api.lookup_max_pages 1, 60 runs): the folder
    whose POST may have created a run waits in retry_wait, shown as such, warned about once, never
    posted again; once a reload lets the look-up see the whole list, it is posted (the run was not there)."""
    seed_runs(cloud.url, "app-1", 60)
    seeded = len(cloud.runs("app-1"))
    folder = write_folder(watched, "maybe-posted", FILES)
    StateStore(tmp_path / "state").save_journal(
        folder, Journal(application_id="app-1", intents=[Intent("ab" * 16, time.time() - 3600)]))
    with structlog.testing.capture_logs() as events:
        service = make_service(cloud.url, [(watched, "app-1")], api={"lookup_max_pages": 1})
        wait_for(lambda: service.outcomes.series().get(("app-1", "retried", "lookup_inconclusive"), 0) >= 3, 30,
                 "three inconclusive look-ups")

        def shown() -> bool:
            status = service.status()
            return status["folders"]["retry_wait"] == 1 and status["lookup_inconclusive"] == {
                "count": 1, "folders": [str(folder)]}

        wait_for(shown, 10, "the folder shown waiting after an inconclusive look-up")
        assert len(cloud.runs("app-1")) == seeded
        assert marker(folder) is None and marker(folder, FAILED) is None
        assert [e["cause"] for e in events if e["event"] == "run_lookup_inconclusive"] == ["page_limit"]

        config = service.config
        service.config = replace(config, api=replace(config.api, lookup_max_pages=5))   # what a reload does
        wait_for(lambda: marker(folder), 30, "the folder tracked once the whole list is seen")
    assert len(cloud.runs("app-1")) == seeded + 1
    assert "run_lookup_conclusive" in [e["event"] for e in events]


def test_shutdown_drains_in_flight_work_and_ends_stopped(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory) -> None:
    cloud.set_faults(latency_seconds=0.5, endpoints=["create_run"])
    service = make_service(cloud.url, [(watched, "app-1")])
    folder = write_folder(watched, "slow", FILES)
    wait_for(lambda: folder in service.index.in_flight(), 20, "the folder in flight")

    service.shutdown()
    assert service.state is State.STOPPED
    assert marker(folder) is not None, "the in-flight folder was not allowed to finish"
    assert len(cloud.runs()) == 1
    service.shutdown()                               # idempotent
    assert service.state is State.STOPPED


def test_run_returns_stopped_after_request_stop(cloud: FakeCloud, watched: Path,
                                                make_service: ServiceFactory) -> None:
    service = make_service(cloud.url, [(watched, "app-1")])
    runner = threading.Thread(target=service.run, name="test-run")
    runner.start()
    folder = write_folder(watched, "run-1", FILES)
    wait_for(lambda: marker(folder), 20, "the folder tracked while run() loops")
    service.request_stop()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert service.state is State.STOPPED


def test_a_service_that_never_started_shuts_down_cleanly(cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state"))
    threads_before = set(threading.enumerate())
    service = Service(config, API_KEY)
    assert service.state is State.STARTING
    service.shutdown()
    assert service.state is State.STOPPED
    service.shutdown()
    assert service.state is State.STOPPED
    assert live_threads_except(threads_before) == []


def test_starting_a_stopped_service_is_refused_without_starting_anything(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state"))
    service = Service(config, API_KEY)
    service.shutdown()
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError):
        service.start()
    assert service.state is State.STOPPED
    assert live_threads_except(threads_before) == []


def test_a_second_start_is_refused_without_starting_more(cloud: FakeCloud, watched: Path,
                                                         make_service: ServiceFactory) -> None:
    service = make_service(cloud.url, [(watched, "app-1")])
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError):
        service.start()
    assert service.state is State.RUNNING
    assert live_threads_except(threads_before) == []
    folder = write_folder(watched, "run-1", FILES)
    wait_for(lambda: marker(folder), 20, "the service still works")
    assert len(cloud.runs()) == 1


def test_ready_is_sent_only_once_the_service_says_it_is_running(
        cloud: FakeCloud, watched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY=1 makes systemd call the unit active, and `status` must then say running, not starting
    (the systemd test saw "running, starting" after READY=1). Here the workers start slowly: the
    start-up scan of an empty path may end first."""
    config = load_config(write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state"))
    states: list[str] = []

    class Recording(Notifier):
        def ready(self, status: str | None = None) -> bool:
            states.append(service.status()["state"])
            return super().ready(status)

    service = Service(config, API_KEY, notifier=Recording({}))
    resize = service._resize_workers

    def slow_resize(count: int) -> None:
        service.ready.wait(2)   # the scan's end, if it can come before the workers have started
        resize(count)

    monkeypatch.setattr(service, "_resize_workers", slow_resize)
    try:
        service.start()
        wait_for(lambda: states, 10, "READY=1")
        assert states == ["running"]
    finally:
        service.shutdown()
