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

import pytest
from helpers import Daemon, marker, wait_for, write_folder

from watcher.watch import Detector

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
