"""No lock is held across a call into another component, and a wedged observer is noticed.

watchdog's dispatcher holds its observer's lock while it calls our handler; a detector that held
its own lock while calling the observer's `schedule`/`unschedule` deadlocked against it (issue 8,
finding 3). These tests churn incomplete folders against the real daemon, check the lock rule at
unit level, and check that an observer whose dispatcher stops answering is reported at once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import API_KEY, Daemon, NotifySocket, marker, wait_for, write_config, write_folder
from structlog.testing import capture_logs
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from watcher.config import WatchConfig, load_config
from watcher.daemon.detection import EVENTS, WEDGED_SECONDS, Detector
from watcher.daemon.detectors import Detectors
from watcher.daemon.notify import Notifier
from watcher.daemon.service import Service
from watcher.fakecloud import FakeCloud

FILES: dict[str, str | bytes] = {"input.json": "{}", "output.json": "{}"}
CHURN_SECONDS = 5.0
CHURN_FOLDERS = 300


def _daemon_status(daemon: Daemon) -> dict[str, Any] | None:
    """The daemon's own status over its control socket, or None when it did not answer (the CLI then
    falls back to a scan of the watched paths, which carries no pid)."""
    out = subprocess.run([sys.executable, "-m", "watcher", "status", "--json", "--config", str(daemon.config)],
                         capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0 or "no daemon answers" in out.stderr:
        return None
    status: dict[str, Any] = json.loads(out.stdout)
    return status


def _churn(watched: Path, seconds: float) -> list[Path]:
    """Create, delete and recreate CHURN_FOLDERS incomplete folders (no marker) for `seconds`, writing one
    complete folder per round; return the complete ones. The incomplete folders are left in place."""
    complete = []
    deadline = time.monotonic() + seconds
    rounds = 0
    while rounds == 0 or time.monotonic() < deadline:
        complete.append(write_folder(watched, f"done-{rounds}", FILES))
        for i in range(CHURN_FOLDERS):
            folder = watched / f"churn-{i}"
            folder.mkdir()
            (folder / "input.json").write_text("{}")
        for i in range(CHURN_FOLDERS):
            shutil.rmtree(watched / f"churn-{i}")
        rounds += 1
    for i in range(CHURN_FOLDERS):
        (watched / f"churn-{i}").mkdir()
    return complete


@pytest.mark.e2e
def test_churning_incomplete_folders_does_not_wedge_the_daemon(watched: Path, daemon_factory,
                                                                 tmp_path: Path) -> None:
    # completion.marker is DONE (write_config), so each incomplete folder gets a watch of its own.
    daemon = daemon_factory([(watched, "app-1")], control_socket=str(tmp_path / "c.sock")).start()
    daemon.wait_ready()
    complete = _churn(watched, CHURN_SECONDS)

    status = _daemon_status(daemon)
    assert status is not None, "the daemon did not answer on its control socket after the churn"
    assert daemon.proc is not None
    assert status["pid"] == daemon.proc.pid
    wait_for(lambda: all(marker(f) for f in complete), 30, "the complete folders written during the churn")
    after = write_folder(watched, "after-churn", FILES)
    wait_for(lambda: marker(after), 20, "a folder written after the churn to be tracked")
    assert daemon.stop(timeout=30) == 0
    assert "observer_wedged" not in daemon.names()


# -- the lock rule at unit level ----------------------------------------------------------------


def _waiting_in(thread: threading.Thread, function: str) -> bool:
    """True while `thread` is inside watchdog's `function` (blocked on the observer's lock, here)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function and "watchdog" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class _GatedEnqueue:
    """An enqueue callback that, once armed, holds the dispatcher inside our handler for `folder`
    (and so holds the observer's lock) until released."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: set[Path] = set()

    def __call__(self, folder: Path) -> None:
        self.seen.add(folder)
        if self.armed and folder == self.folder:
            self.entered.set()
            self.release.wait(30)


@pytest.mark.parametrize("call", ["watch_folder", "unwatch_folder"])
def test_the_detector_answers_while_a_watch_change_waits_for_a_busy_dispatcher(tmp_path: Path, call: str) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    gone, kept, new = root / "gone", root / "kept", root / "new"
    for folder in (gone, kept, new):
        folder.mkdir()
    gate = _GatedEnqueue(gone)
    detector = Detector([root], gate)
    detector.start()
    changer: threading.Thread | None = None
    try:
        assert detector.watch_folder(gone)
        assert detector.watch_folder(kept)
        (root / "sentinel").mkdir()
        wait_for(lambda: root / "sentinel" in gate.seen, 10, "the creations to be dispatched")
        gate.armed = True
        gone.rmdir()   # the dispatcher marks it stale and enqueues it, and stops inside enqueue
        wait_for(gate.entered.is_set, 10, "the dispatcher to be inside our handler")

        actions: dict[str, Callable[[], object]] = {"watch_folder": lambda: detector.watch_folder(new),
                                                     "unwatch_folder": lambda: detector.unwatch_folder(kept)}
        result: list[object] = []
        changer = threading.Thread(target=lambda: result.append(actions[call]()), daemon=True)
        changer.start()
        observer_call = "schedule" if call == "watch_folder" else "unschedule"
        wait_for(lambda: _waiting_in(changer, observer_call), 10, f"{call} to wait for the observer")

        # What the dispatcher and the main loop do next: neither may wait for the changer.
        probe = threading.Thread(target=lambda: (detector.mark_stale(gone), detector.alive(),
                                                 detector.folder_watch_count()), daemon=True)
        probe.start()
        probe.join(5)
        answered = not probe.is_alive()
        gate.release.set()
        changer.join(10)
        assert answered, f"the detector's lock was held while {call} waited for the observer's lock"
        assert not changer.is_alive(), f"{call} never returned"
        if call == "watch_folder":
            assert result == [True]
            assert detector.folder_watch_count() == 3
        else:
            assert detector.folder_watch_count() == 1
    finally:
        gate.release.set()
        if changer is None or not changer.is_alive():   # a deadlocked detector cannot be stopped
            detector.stop()


def test_watch_changes_for_a_busy_folder_wait_for_nobody(tmp_path: Path) -> None:
    """While one caller's watch_folder waits for the observer, a second caller for the same folder gets
    False at once (it polls), and an unwatch_folder meanwhile makes the first caller undo its watch."""
    root = tmp_path / "runs"
    root.mkdir()
    gone, new = root / "gone", root / "new"
    gone.mkdir()
    new.mkdir()
    gate = _GatedEnqueue(gone)
    detector = Detector([root], gate)
    detector.start()
    changer: threading.Thread | None = None
    try:
        (root / "sentinel").mkdir()
        wait_for(lambda: root / "sentinel" in gate.seen, 10, "the creations to be dispatched")
        gate.armed = True
        gone.rmdir()
        wait_for(gate.entered.is_set, 10, "the dispatcher to be inside our handler")
        result: list[bool] = []
        changer = threading.Thread(target=lambda: result.append(detector.watch_folder(new)), daemon=True)
        changer.start()
        wait_for(lambda: _waiting_in(changer, "schedule"), 10, "watch_folder to wait for the observer")

        assert detector.watch_folder(new) is False   # returns at once: this thread would block otherwise
        detector.unwatch_folder(new)
        gate.release.set()
        changer.join(10)
        assert result == [False]
        assert detector.folder_watch_count() == 0
        n = len(gate.seen)
        (new / "DONE").touch()
        (root / "sentinel-2").mkdir()
        wait_for(lambda: root / "sentinel-2" in gate.seen, 10, "sentinel-2 enqueued")
        assert len(gate.seen) == n + 1, "a file in the unwatched folder was reported"
        assert detector.watch_folder(new), "the folder can be watched again"
    finally:
        gate.release.set()
        if changer is None or not changer.is_alive():
            detector.stop()


def test_stop_gives_up_on_an_observer_whose_dispatcher_is_stuck(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    gate = _GatedEnqueue(root / "stuck")
    gate.armed = True
    detector = Detector([root], gate, stop_seconds=0.5)
    detector.start()
    try:
        (root / "stuck").mkdir()
        wait_for(gate.entered.is_set, 10, "the dispatcher to be inside our handler")
        stopper = threading.Thread(target=detector.stop, daemon=True)
        with capture_logs() as logs:
            stopper.start()
            stopper.join(10)
        assert not stopper.is_alive(), "stop() waited for a stuck dispatcher"
        assert [e["event"] for e in logs] == ["observer_stop_timeout"]
        assert not detector.alive()
    finally:
        gate.release.set()


# -- a wedged observer is noticed ------------------------------------------------------------------


class Clock:
    """Monotonic seconds that only the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _watches(tmp_path: Path, root: Path, *, polling: bool) -> list[WatchConfig]:
    path = write_config(tmp_path / "watches.yaml", "http://127.0.0.1:9", [(root, "app-1")], tmp_path / "state")
    raw = yaml.safe_load(path.read_text())
    raw["watch"][0].update({"polling": polling, "poll_interval_seconds": 0.1})
    path.write_text(yaml.safe_dump(raw))
    return load_config(path).watch


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_an_observer_that_stops_delivering_events_is_reported_once(tmp_path: Path, polling: bool) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    gate = _GatedEnqueue(root / "stuck")
    clock = Clock()
    detectors = Detectors(_watches(tmp_path, root, polling=polling), gate, clock=clock)
    detectors.start()
    [detector] = detectors.members()
    try:
        # A heartbeat goes through the dispatcher and is answered.
        detectors.check_liveness()
        clock.advance(1)
        wait_for(lambda: detector.unanswered_for(clock()) == 0, 10, "the heartbeat to be answered")
        clock.advance(10 * WEDGED_SECONDS)
        assert detectors.wedged() == {}

        gate.armed = True
        (root / "stuck").mkdir()
        wait_for(gate.entered.is_set, 10, "the dispatcher to be inside our handler")
        with capture_logs() as logs:
            detectors.check_liveness()                  # this heartbeat waits behind the stuck event
            clock.advance(WEDGED_SECONDS - 1)
            detectors.check_liveness()
            assert detectors.wedged() == {}
            assert logs == []
            clock.advance(1)
            detectors.check_liveness()
            assert detectors.wedged() == {str(root): WEDGED_SECONDS}
            clock.advance(5)
            detectors.check_liveness()
            assert [(e["event"], e["log_level"], e["watched"]) for e in logs] == [
                ("observer_wedged", "error", [str(root)])]
            assert detectors.alive(), "the observer's threads still run: only their dispatcher is stuck"

            gate.release.set()
            wait_for(lambda: not detectors.wedged(), 10, "the heartbeat to be answered after all")
            detectors.check_liveness()
            assert [e["event"] for e in logs] == ["observer_wedged", "observer_answering"]
    finally:
        gate.release.set()
        detectors.stop()


class _Blocker(FileSystemEventHandler):
    """A second handler on the watched path's watch: the dispatcher calls it under the observer's lock."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def dispatch(self, event: FileSystemEvent) -> None:
        self.entered.set()
        self.release.wait(60)


def test_the_service_withholds_the_watchdog_ping_and_reports_a_wedged_observer(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                                      metrics={"listen": "127.0.0.1:0"}, control_socket=str(tmp_path / "c.sock")))
    systemd = NotifySocket(tmp_path / "notify.sock")
    observers: list[BaseObserver] = []

    def observer_factory() -> BaseObserver:
        observers.append(Observer())
        return observers[-1]

    # WATCHDOG_USEC 0.4 s: a ping is due every 0.1 s.
    notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"})
    service = Service(config, API_KEY, observer_factory=observer_factory, notifier=notifier)
    clock = Clock()
    service.detectors.clock = clock   # heartbeats are timed by this clock alone
    blocker = _Blocker()
    service.start()
    runner = threading.Thread(target=service.run, name="test-main-loop")
    runner.start()
    try:
        assert service.listeners.health_server is not None
        healthz = f"http://127.0.0.1:{service.listeners.health_server.port}/healthz"
        wait_for(lambda: systemd.pings() > 0, 10, "a watchdog ping")
        assert httpx.get(healthz, timeout=5).status_code == 200
        assert service.status()["observer_wedged"] == []

        observers[0].schedule(blocker, str(watched), recursive=False, event_filter=EVENTS)
        (watched / "stuck").mkdir()
        wait_for(blocker.entered.is_set, 10, "the dispatcher to be stuck in the other handler")
        with capture_logs() as logs:
            def wedged_logged() -> bool:
                clock.advance(1)   # one second per poll: a heartbeat that is answered never gets old
                return any(e["event"] == "observer_wedged" for e in logs)

            wait_for(wedged_logged, 30, "observer_wedged")
            assert service.health_view.watchdog_ok() == (False, False)
            systemd.pings()
            wait_for(lambda: sum(e["event"] == "watchdog_withheld" for e in logs) >= 3, 10, "withheld pings")
            assert systemd.pings() == 0, "a watchdog ping was sent for a wedged observer"
            response = httpx.get(healthz, timeout=5)
            assert response.status_code == 503
            assert any(r.startswith("observer not answering for") and r.endswith(str(watched))
                       for r in response.json()["reasons"])
            status = service.status()
            assert status["observer_wedged"] == [str(watched)]
            assert status["observer_alive"] is True
            assert [e["log_level"] for e in logs if e["event"] == "observer_wedged"] == ["error"]
    finally:
        blocker.release.set()
        service.request_stop()
        runner.join(30)
        systemd.sock.close()
    assert not runner.is_alive()
