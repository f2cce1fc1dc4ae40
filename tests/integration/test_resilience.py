"""Filesystem faults and a failing watcher (issue 3, items 4 and 5), in-process: a real Service with
a real observer on tmp_path, against the emulator on loopback.

The suite runs as root, so chmod cannot make anything unwritable or unreadable: each fault is
simulated at the narrowest boundary that the real fault would hit (`os.open` for one folder's
paths, `watcher.runfolder.markers.atomic_write` for one marker, the spool's archive writer, the client's `open`
of one input file, an observer whose `schedule` fails like inotify does at its limits).
"""

from __future__ import annotations

import errno
import gzip
import io
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import structlog
from helpers import API_KEY, FAILED, TRACKED, marker, wait_for, write_config, write_folder
from watchdog.observers import Observer

import watcher.cloud.client
import watcher.daemon.detection
import watcher.runfolder.archive
import watcher.runfolder.markers
import watcher.runfolder.prepare
from watcher.config import load_config
from watcher.daemon.index import Next, Stage
from watcher.daemon.observers import ObserverFactory
from watcher.daemon.service import Service, State
from watcher.fakecloud import FakeCloud
from watcher.runfolder.dirhandle import DirHandle
from watcher.runfolder.folder import Member
from watcher.runfolder.markers import JOURNAL, StateStore
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.scan import classify, scan_all

INPUT = b'{"stops": [1, 2, 3]}'
OUTPUT = b'{"solution": 7}'
FILES: dict[str, str | bytes] = {"input.json": INPUT, "output.json": OUTPUT}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

ServiceFactory = Callable[..., Service]


def opened_path(path: Any, dir_fd: int | None) -> str:
    """The full path an `os.open(path, dir_fd=...)` call opens (our I/O is relative to open folders)."""
    name = os.fsdecode(os.fspath(path))
    if dir_fd is not None and not name.startswith(os.sep):
        name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    return name
Events = list[MutableMapping[str, Any]]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_service(tmp_path: Path, cloud: FakeCloud, state_dir: Path) -> Iterator[ServiceFactory]:
    """make_service([(path, app)], observer_factory=None, **config overrides) -> a started Service.

    Depends on `cloud` so that the emulator's thread predates the leak check. Every service is shut
    down at teardown, and every thread it started must have ended."""
    made: list[Service] = []
    threads_before = set(threading.enumerate())

    def make(watched: list[tuple[Path, str]], observer_factory: ObserverFactory | None = None,
             **overrides: Any) -> Service:
        path = write_config(tmp_path / f"config-{len(made)}.yaml", cloud.url, watched, state_dir, **overrides)
        service = Service(load_config(path), API_KEY, observer_factory=observer_factory)
        made.append(service)
        service.start()
        wait_for(service.ready.is_set, 10, "the start-up scan")
        return service

    yield make
    for service in made:
        service.shutdown()
        assert service.state is State.STOPPED
    wait_for(lambda: not [t for t in threading.enumerate() if t not in threads_before and t.is_alive()],
             10, "the services' threads to end")


@contextmanager
def main_loop(service: Service) -> Iterator[threading.Thread]:
    """`service.run()` on a thread, as the CLI runs it; stopped (and drained) on exit."""
    runner = threading.Thread(target=service.run, name="test-main-loop")
    runner.start()
    try:
        yield runner
    finally:
        service.request_stop()
        runner.join(timeout=15)
        assert not runner.is_alive(), "run() did not return after request_stop()"
    assert service.state is State.STOPPED


def named(events: Events, name: str) -> Events:
    return [e for e in events if e["event"] == name]


def settled(service: Service) -> bool:
    return len(service.index) == 0 and not service.index.in_flight()


def state_files(root: Path) -> list[Path]:
    """Every file of ours (markers, journal, claim, temporaries) anywhere under `root`."""
    return sorted(p for p in root.rglob(".nextmv-*")) if root.exists() else []


def oserror(code: int, path: str | os.PathLike[str] | None = None) -> OSError:
    """The OSError the kernel's `code` gives, naming `path` like a real one."""
    if path is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), os.fspath(path))


# -- the watcher itself (issue item 5) -----------------------------------------------------------


def test_a_dead_observer_is_restarted_and_folders_created_after_are_tracked(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory) -> None:
    service = make_service([(watched, "app-1")])
    detector = service.detectors._detectors[0]
    dead = detector._observer
    assert dead is not None and service.detectors.alive()

    with structlog.testing.capture_logs() as events:
        dead.stop()                  # the observer thread ends behind the service's back
        dead.join(timeout=5)
        assert not service.detectors.alive()
        assert service.health()[0] is False
        service._tick()              # one turn of the main loop: it notices, restarts, rescans

    assert len(named(events, "observer_died")) == 1
    assert named(events, "observer_died")[0]["log_level"] == "error"
    assert [e["reason"] for e in named(events, "rescanning")] == ["observer restarted"]
    assert service.detectors.restarts == 1
    assert service.status()["observer_restarts"] == 1
    assert service.detectors.alive()
    assert detector._observer is not dead
    assert service.health()[0] is True

    # No more main-loop turns (so no reconciliation): only the new observer can find this folder.
    folder = write_folder(watched, "after-restart", FILES)
    wait_for(lambda: marker(folder), 10, "a folder created after the restart tracked")
    assert [r.body["name"] for r in cloud.runs()] == ["after-restart"]


def test_a_queue_overflow_rescans_and_finds_the_folder_whose_events_were_lost(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory) -> None:
    service = make_service([(watched, "app-1")], reconcile_seconds=3600)
    observer = service.detectors._detectors[0]._observer
    assert observer is not None
    observer.unschedule_all()        # the kernel drops this folder's events, as on an overflow
    assert service.detectors.alive(), "the observer itself lives on"
    lost = write_folder(watched, "lost-events", FILES)

    with structlog.testing.capture_logs() as events, main_loop(service):
        assert service.index.snapshot() == {} and marker(lost) is None
        # Exactly what watchdog logs when the kernel reports IN_Q_OVERFLOW; the service listens for it.
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        wait_for(lambda: marker(lost), 10, "the rescan to find and track the folder")

    rescans = named(events, "rescanning")
    assert len(rescans) == 1 and "overflow" in rescans[0]["reason"]
    assert [e["folders"] for e in named(events, "reconcile_queued")] == [1]
    assert [r.body["name"] for r in cloud.runs()] == ["lost-events"]
    assert service.detectors.restarts == 0


def limited_observer(code: int) -> ObserverFactory:
    """An inotify observer that fails to watch anything, as inotify does at its limits."""

    class Limited(Observer):  # type: ignore[misc,valid-type]
        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError(code, "inotify watch limit reached" if code == errno.ENOSPC
                          else "inotify instance limit reached")

    return Limited


@pytest.mark.parametrize(("code", "sysctl"), [(errno.ENOSPC, "fs.inotify.max_user_watches"),
                                              (errno.EMFILE, "fs.inotify.max_user_instances")])
def test_inotify_limits_at_start_name_the_sysctl_and_fall_back_to_polling(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, code: int, sysctl: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher.daemon.detection, "POLL_FALLBACK_SECONDS", 0.2)   # the fallback's interval, shortened
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")], observer_factory=limited_observer(code))
    limits = named(events, "inotify_limit")
    assert len(limits) == 1
    assert limits[0]["log_level"] == "error"
    assert sysctl in limits[0]["hint"]
    assert "polling" in limits[0]["fallback"]
    assert service.detectors.polling
    assert service.detectors.alive()
    assert service.health()[0] is True

    folder = write_folder(watched, "polled", FILES)   # after start: only the polling observer sees it
    wait_for(lambda: marker(folder), 10, "the folder tracked through polling")
    assert len(cloud.runs()) == 1


# -- disk full (issue item 4) ---------------------------------------------------------------------


def test_disk_full_writing_the_tracked_marker_is_retried_and_the_run_adopted_not_posted_again(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = DirHandle.write_atomic
    refused: list[Path] = []

    def disk_full_for_tracked(self: DirHandle, name: str, data: bytes, mode: int = 0o640, **kw: Any) -> None:
        if name == TRACKED and len(refused) < 2:
            refused.append(self.path / name)
            raise oserror(errno.ENOSPC, self.path / name)
        real_write(self, name, data, mode, **kw)

    monkeypatch.setattr(DirHandle, "write_atomic", disk_full_for_tracked)
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        folder = write_folder(watched, "run-1", FILES)
        # Our own state errors back off 5 s, then 10 s.
        wait_for(lambda: marker(folder), 40, "the folder tracked once the disk has room")
        wait_for(lambda: settled(service), 10, "the queue to settle")

    assert len(refused) == 2
    errors = named(events, "state_error")
    assert len(errors) == 2
    assert [(e["log_level"], e["retry_in"]) for e in errors] == [("warning", 5.0), ("warning", 10.0)]
    assert all("No space left on device" in e["error"] and TRACKED in e["error"] for e in errors)
    assert marker(folder, FAILED) is None
    assert named(events, "folder_failed") == []
    runs = cloud.runs()
    assert len(runs) == 1, "the retry must adopt the run the first POST created, not post again"
    tracked = marker(folder)
    assert tracked is not None
    assert tracked["run_id"] == runs[0].run_id
    assert tracked["adopted"] is True
    assert tracked["token"] in runs[0].body["description"]
    # The second refusal came after the adoption, so the run was looked up (and adopted) twice.
    assert [e["run_id"] for e in named(events, "run_adopted")] == [runs[0].run_id] * 2
    assert [e["run_id"] for e in named(events, "run_tracked")] == [runs[0].run_id]
    assert not (folder / JOURNAL).exists()
    assert StateStore(state_dir).journal(folder).attempts == 0, "our disk being full is not the folder's fault"


def track_invalid_folder_with_a_full_disk(watched: Path, make_service: ServiceFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Service, Events]:
    """An invalid folder (no input) whose failed marker hits a full disk once; returns once it is marked."""
    real_write = DirHandle.write_atomic
    refused: list[Path] = []

    def disk_full_for_failed(self: DirHandle, name: str, data: bytes, mode: int = 0o640, **kw: Any) -> None:
        if name == FAILED and not refused:
            refused.append(self.path / name)
            raise oserror(errno.ENOSPC, self.path / name)
        real_write(self, name, data, mode, **kw)

    monkeypatch.setattr(DirHandle, "write_atomic", disk_full_for_failed)
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        folder = write_folder(watched, "no-input", {"output.json": OUTPUT})
        wait_for(lambda: marker(folder, FAILED), 10, "the folder marked failed once the disk has room")
        wait_for(lambda: settled(service), 10, "the queue to settle")
    assert len(refused) == 1
    return folder, service, events


def test_disk_full_writing_the_failed_marker_is_retried_until_it_is_written(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, service, events = track_invalid_folder_with_a_full_disk(watched, make_service, monkeypatch)
    failed = marker(folder, FAILED)
    assert failed is not None
    assert (failed["reason"], failed["attempts"]) == ("invalid", 1)
    assert "no input" in failed["error"]
    assert any("No space left on device" in str(e.get("error")) for e in events), "the disk-full error is logged"
    assert len(named(events, "folder_failed")) == 1
    assert service.outcomes.totals()["failed"] == 1
    assert cloud.runs() == []


def test_disk_full_writing_the_failed_marker_is_logged_as_a_state_error(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, events = track_invalid_folder_with_a_full_disk(watched, make_service, monkeypatch)
    assert [e["error"] for e in named(events, "folder_error")] == []
    errors = named(events, "state_error")
    assert len(errors) == 1 and "No space left on device" in errors[0]["error"]
    assert (errors[0]["log_level"], errors[0]["pending"], errors[0]["retry_in"]) == ("warning", "failed marker", 5.0)
    assert [e for e in events if "exc_info" in e] == []


def test_disk_full_on_a_spool_file_is_retried_and_leaves_no_spool_file(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_archive = watcher.runfolder.archive.write_archive
    spool = state_dir / "spool"
    spooled: list[list[Path]] = []   # the spool files present each time an archive is written

    def disk_full_once(d: RunDir, members: Sequence[Member], dest: BinaryIO) -> None:
        spooled.append(sorted(spool.iterdir()))
        if len(spooled) == 1:
            dest.write(b"\x1f\x8b partial")
            raise oserror(errno.ENOSPC)
        real_archive(d, members, dest)

    monkeypatch.setattr(watcher.runfolder.prepare, "write_archive", disk_full_once)
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        folder = write_folder(watched, "multi", {"input/a.csv": "x,y\n1,2\n", "input/b.csv": "z\n3\n",
                                                 "output.json": OUTPUT})
        wait_for(lambda: marker(folder), 10, "the folder tracked after the spool error")
        wait_for(lambda: settled(service), 10, "the queue to settle")

    errors = named(events, "state_error")
    assert len(errors) == 1
    assert "spool directory" in errors[0]["error"] and "No space left on device" in errors[0]["error"]
    assert "input (as an archive) needs up to" in errors[0]["error"]
    assert errors[0]["log_level"] == "warning" and [e for e in events if "exc_info" in e] == []
    assert marker(folder, FAILED) is None
    assert [len(files) for files in spooled] == [1, 1], "one spool file at a time: the failed one was removed"
    assert spooled[0] != spooled[1]
    assert list(spool.iterdir()) == []
    runs = cloud.runs()
    assert len(runs) == 1
    upload = runs[0].artifact("input")
    assert upload is not None and upload.data is not None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(upload.data))) as tar:
        assert sorted(tar.getnames()) == ["a.csv", "b.csv"]
        member = tar.extractfile("a.csv")
        assert member is not None and member.read() == b"x,y\n1,2\n"


# -- a read-only run folder ------------------------------------------------------------------------


@contextmanager
def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[tuple[list[str], list[str]]]:
    """Make `folder` behave like a directory on a read-only mount: opening anything inside it for
    writing, and unlinking one of the daemon's `.nextmv-*` names in it (whether it exists or not, as
    unlink(2) does there; a producer removes its files through a writable mount of its own), fails
    with EROFS, and access(W_OK) says no. Yields (refused, written elsewhere) paths."""
    inside = os.fspath(folder) + os.sep
    real_open, real_access, real_unlink = os.open, os.access, os.unlink
    refused: list[str] = []
    written: list[str] = []

    def ro_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        name = opened_path(path, dir_fd)
        if flags & WRITE_FLAGS:
            if name.startswith(inside):
                refused.append(name)
                raise oserror(errno.EROFS, name)
            written.append(name)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def ro_access(path: Any, mode: int, **kwargs: Any) -> bool:
        if mode & os.W_OK and os.fsdecode(os.fspath(path)).rstrip(os.sep) == os.fspath(folder):
            return False
        return real_access(path, mode, **kwargs)

    def ro_unlink(path: Any, *, dir_fd: int | None = None) -> None:
        name = opened_path(path, dir_fd)
        if name.startswith(inside) and Path(name).name.startswith(".nextmv-"):
            refused.append(name)
            raise oserror(errno.EROFS, name)
        real_unlink(path, dir_fd=dir_fd)

    with monkeypatch.context() as m:
        m.setattr(os, "open", ro_open)
        m.setattr(os, "access", ro_access)
        m.setattr(os, "unlink", ro_unlink)
        yield refused, written


def test_a_read_only_run_folder_keeps_its_state_in_the_state_dir_keyed_by_inode(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "ro-run"
    folder = watched / name
    store = StateStore(state_dir)
    with read_only(monkeypatch, folder) as (refused, written), structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        write_folder(watched, name, FILES)
        wait_for(lambda: store.finished(folder) == "tracked", 10, "the read-only folder tracked")
        wait_for(lambda: settled(service), 10, "the queue to settle")
        service.shutdown()
        assert [e for e in events if e["log_level"] in ("error", "critical") or "exc_info" in e] == [], \
            "the supported read-only set-up logs no error"

        fallback = store.fallback_dir(folder)
        assert fallback.parent == state_dir / "folders"
        assert state_files(folder) == [], "nothing of ours may be left in a read-only folder"
        # State files are written through temporary files with random names (.nextmv-tmp-*).
        assert any(Path(p).parent == folder and Path(p).name.startswith(".nextmv-") for p in refused), \
            "tried the folder first"
        assert any(Path(p).parent == fallback and Path(p).name.startswith(".nextmv-") for p in written), \
            "state written in the state dir"
        assert sorted(p.name for p in fallback.iterdir()) == [TRACKED]
        runs = cloud.runs()
        assert len(runs) == 1
        tracked = store.tracked(folder)
        assert tracked is not None and tracked["run_id"] == runs[0].run_id
        assert marker(folder, FAILED) is None
        config = service.config
        (report,) = list(scan_all(config, store, time.time()))
        assert (report.state, report.run_id) == ("tracked", runs[0].run_id)

        # The folder is replaced by a new one under the same name (a different inode).
        folder.rename(tmp_path / "moved-away")
        write_folder(watched, name, FILES)
        assert store.finished(folder) is None
        assert store.tracked(folder) is None
        report = classify(folder, config.watch[0], config, store, time.time())
        assert report.state == "pending", report

        # A restarted daemon tracks the new folder as a run of its own.
        again = make_service([(watched, "app-1")])
        wait_for(lambda: store.finished(folder) == "tracked", 10, "the new folder tracked")
        wait_for(lambda: settled(again), 10, "the queue to settle")
        again.shutdown()

    runs = cloud.runs()
    assert len(runs) == 2
    new = store.tracked(folder)
    assert new is not None and new["run_id"] == runs[1].run_id != runs[0].run_id
    assert store.fallback_dir(folder) != fallback
    assert sorted(p.name for p in (state_dir / "folders").iterdir()) == sorted(
        [fallback.name, store.fallback_dir(folder).name])
    assert state_files(folder) == []


def test_a_read_only_run_folder_deleted_and_recreated_under_its_name_is_not_taken_for_tracked(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "latest"
    folder = watched / name
    store = StateStore(state_dir)
    with read_only(monkeypatch, folder):
        service = make_service([(watched, "app-1")])
        write_folder(watched, name, FILES)
        wait_for(lambda: store.finished(folder) == "tracked", 10, "the read-only folder tracked")
        wait_for(lambda: settled(service), 10, "the queue to settle")
        old = folder.stat()

        # The producer (through a writable mount of its own) deletes the folder and writes a new run.
        shutil.rmtree(folder)
        write_folder(watched, name, {"input.json": b'{"stops": [4]}', "output.json": OUTPUT})
        if folder.stat().st_ino != old.st_ino:
            pytest.skip("this filesystem did not reuse the inode; the bug needs it")
        assert store.finished(folder) is None, "a new folder under a reused inode is taken for the tracked one"
        wait_for(lambda: len(cloud.runs()) == 2, 10, "the new folder tracked as a run of its own")


# -- a folder deleted while queued ----------------------------------------------------------------


def test_a_folder_deleted_while_queued_leaves_no_trace_and_nothing_crashes(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, state_dir: Path) -> None:
    # One worker, held for a second by a slow POST, so that the second folder waits in the queue.
    cloud.set_faults(latency_seconds=1.0, endpoints=["create_run"])
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")], workers=1)
        first = write_folder(watched, "first", FILES)
        wait_for(lambda: first in service.index.in_flight(), 10, "the only worker busy")
        doomed = write_folder(watched, "doomed", FILES)
        wait_for(lambda: doomed in service.index.snapshot(), 10, "the second folder queued")
        shutil.rmtree(doomed)
        assert first in service.index.in_flight(), "the worker must still be busy for this test to mean anything"
        wait_for(lambda: marker(first), 10, "the first folder tracked")
        wait_for(lambda: settled(service), 10, "the queue to settle")
        alive, _ = service.health()

    assert alive and service.status()["workers_alive"] == 1
    assert doomed not in service.index.snapshot() and doomed not in service.index.in_flight()
    assert doomed not in service.index
    assert not doomed.exists()
    assert state_files(state_dir) == []
    assert named(events, "folder_error") == [] and named(events, "folder_failed") == []
    assert [r.body["name"] for r in cloud.runs()] == ["first"]
    assert service.processor.process(doomed) == Next(Stage.GONE)   # again, directly: nothing to do, no error


# -- permission denied ---------------------------------------------------------------------------


def test_permission_denied_on_a_file_of_a_multi_file_input_marks_the_folder_failed_naming_it(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open
    secret = "secret.csv"

    def denied(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if opened_path(path, dir_fd).endswith(os.sep + secret):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denied)
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        folder = write_folder(watched, "locked", {"input/ok.csv": "a\n", f"input/{secret}": "b\n",
                                                  "output.json": OUTPUT})
        failed = wait_for(lambda: marker(folder, FAILED), 10, "the folder marked failed")
        wait_for(lambda: settled(service), 10, "the queue to settle")

    assert failed["reason"] == "invalid"
    assert "permission denied" in failed["error"] and secret in failed["error"]
    assert marker(folder) is None
    assert cloud.runs() == []
    assert named(events, "folder_error") == []


def test_permission_denied_reading_a_json_input_marks_the_folder_failed_naming_it(
        cloud: FakeCloud, watched: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def denied(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if opened_path(path, dir_fd).endswith(os.sep + "input.json"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    # The json input is opened for the first time for its PUT: it is sent as its bytes.
    monkeypatch.setattr(os, "open", denied)
    with structlog.testing.capture_logs() as events:
        service = make_service([(watched, "app-1")])
        folder = write_folder(watched, "locked", FILES)
        wait_for(lambda: marker(folder, FAILED) or named(events, "folder_error"), 10, "an outcome")
        service.shutdown()

    errors = [e["error"] for e in named(events, "folder_error")]
    assert errors == [], errors
    failed = marker(folder, FAILED)
    assert failed is not None
    assert failed["reason"] == "invalid"
    assert "permission denied" in failed["error"] and "input.json" in failed["error"]
    assert cloud.runs() == []


# -- symlinks ---------------------------------------------------------------------------------------


def test_a_symlinked_run_folder_is_never_tracked_and_nothing_is_written_through_it(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "outside"
    early_target = write_folder(outside, "early", FILES)
    late_target = write_folder(outside, "late", FILES)
    (watched / "early-link").symlink_to(early_target, target_is_directory=True)   # for the start-up scan
    service = make_service([(watched, "app-1")])
    detector = service.detectors._detectors[0]
    enqueue = detector.enqueue
    queued: list[Path] = []

    def spy(folder: Path) -> None:   # what the observer reports, so that the test is not vacuous
        queued.append(folder)
        enqueue(folder)

    monkeypatch.setattr(detector, "enqueue", spy)
    with structlog.testing.capture_logs() as events:
        late_link = watched / "late-link"
        late_link.symlink_to(late_target, target_is_directory=True)   # for the observer
        control = write_folder(watched, "real", FILES)
        wait_for(lambda: marker(control), 10, "the real folder tracked")
        wait_for(lambda: late_link in queued, 10, "the observer to report the symlink")
        wait_for(lambda: settled(service), 10, "the queue to settle")
        assert service.handle_control({"command": "rescan"}) == {"ok": True}
        service._tick()                                  # a full reconciliation
        wait_for(lambda: settled(service), 10, "the queue to settle after the rescan")

    assert [r.body["name"] for r in cloud.runs()] == ["real"]
    assert state_files(outside) == [], "nothing may be written through the symlink"
    assert not (state_dir / "folders").exists()
    assert not [e for e in events if "link" in str(e.get("folder", ""))]
    assert service.outcomes.totals() == {"tracked": 1, "failed": 0, "retried": 0}


def test_an_input_symlink_pointing_outside_the_run_folder_is_refused_and_not_followed(
        cloud: FakeCloud, watched: Path, tmp_path: Path, make_service: ServiceFactory) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(b'{"password": "hunter2"}')
    service = make_service([(watched, "app-1")])
    folder = watched / "escapes"
    (watched / ".tmp-escapes").mkdir()
    (watched / ".tmp-escapes" / "input.json").symlink_to(secret)
    (watched / ".tmp-escapes" / "output.json").write_bytes(OUTPUT)
    (watched / ".tmp-escapes" / "DONE").touch()
    (watched / ".tmp-escapes").rename(folder)

    failed = wait_for(lambda: marker(folder, FAILED), 10, "the folder refused")
    wait_for(lambda: settled(service), 10, "the queue to settle")
    assert failed["reason"] == "invalid"
    assert "input.json" in failed["error"] and "outside the run folder" in failed["error"]
    assert cloud.runs() == []
    assert not [r for r in cloud.requests() if r.endpoint == "put"], "nothing may be uploaded"
