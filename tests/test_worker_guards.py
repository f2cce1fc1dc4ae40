"""FolderProcessor's guards against producers, one step at a time with a stepped clock (no threads, no
HTTP): incomplete folders that cannot be watched are looked at less often as they age; the same I/O
error three times in a row makes a folder invalid; a state file that is not ours fails the folder."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import FAILED, marker, write_config, write_folder

from watcher.claim import Claims, LeaseKeeper
from watcher.config import Config, load_config
from watcher.errors import FolderUnreadable
from watcher.folder import RunFolder
from watcher.retry import ApiGate
from watcher.state import JOURNAL, StateStore
from watcher.tracker import Outcome
from watcher.worker import POLL_MAX_SECONDS, POLL_SECONDS, SAME_ERROR_LIMIT, FolderProcessor

T0 = 1_800_000_000.0
FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"value": 7}'}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeTracker:
    """Stands in for the upload-and-track sequence: raises `error` when set, else marks the folder
    tracked (as the real one does, through the open folder) and drops its journal."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0
        self.store: StateStore | None = None

    def track(self, run: RunFolder, application_id: str, instance_id: str | None,
              check_claim: Callable[[], None] = lambda: None) -> Outcome:
        self.calls += 1
        if self.error is not None:
            raise self.error
        assert self.store is not None
        self.store.mark_tracked(run.handle, f"run-{run.name}", application_id, T0, name=run.name, token="t" * 32)
        self.store.clear_journal(run.handle)
        return Outcome(run_id=f"run-{run.name}", adopted=False)


def make_processor(tmp_path: Path, watched: Path, clock: Clock, tracker: FakeTracker,
                   watched_folders: list[Path] | None = None, **overrides: Any) -> tuple[FolderProcessor, Config]:
    config = load_config(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", [(watched, "app-1")],
                                      tmp_path / "state", **overrides))
    store = StateStore.of(config)
    tracker.store = store
    claims = Claims(clock=clock, store=store)

    def watch_folder(folder: Path) -> bool:
        if watched_folders is not None:
            watched_folders.append(folder)
        return False   # as past the inotify watch limit: the folder is polled

    processor = FolderProcessor(config, store, claims, LeaseKeeper(claims), tracker,  # type: ignore[arg-type]
                                ApiGate(clock), watch_folder=watch_folder, unwatch_folder=lambda _: None,
                                clock=clock, rng=random.Random(0))
    return processor, config


def test_an_unwatched_incomplete_folder_is_looked_at_less_often_as_it_ages(tmp_path: Path, watched: Path) -> None:
    clock, tracker, asked = Clock(), FakeTracker(), []
    processor, _ = make_processor(tmp_path, watched, clock, tracker, asked)
    folder = write_folder(watched, "slow-producer", {"input.json": "{}"}, marker=None)

    delays = []
    for age in (0.0, 5.0, 60.0, 600.0, 1200.0, 7200.0):
        clock.now = T0 + age
        again = processor.process(folder)
        assert again is not None
        delays.append(round(again - clock.now, 3))

    assert delays == [POLL_SECONDS, 5.0, 60.0, POLL_MAX_SECONDS, POLL_MAX_SECONDS, POLL_MAX_SECONDS]
    assert asked == [folder] * 6, "a watch is asked for every time (it may become possible)"
    assert tracker.calls == 0
    assert processor.incomplete_since[folder] == T0


def test_the_same_io_error_three_times_in_a_row_makes_the_folder_invalid(tmp_path: Path, watched: Path) -> None:
    clock, tracker = Clock(), FakeTracker()
    processor, _ = make_processor(tmp_path, watched, clock, tracker)
    folder = write_folder(watched, "bad-disk", FILES)
    tracker.error = FolderUnreadable(str(folder), "input.json: Input/output error")

    with structlog.testing.capture_logs() as events:
        for attempt in range(1, SAME_ERROR_LIMIT):
            again = processor.process(folder)
            assert again is not None, f"attempt {attempt} is retried"
            assert marker(folder, FAILED) is None
            assert StateStore(tmp_path / "state").journal(folder).repeats == attempt
            clock.now = again
        assert processor.process(folder) is None

    failed = marker(folder, FAILED)
    assert failed is not None
    assert failed["reason"] == "invalid"
    assert failed["error"] == f"invalid folder: input.json: Input/output error ({SAME_ERROR_LIMIT} times in a row)"
    assert tracker.calls == SAME_ERROR_LIMIT
    assert [e["reason"] for e in events if e["event"] == "folder_retrying"] == ["unreadable"] * (SAME_ERROR_LIMIT - 1)
    assert not any(e["event"] == "folder_error" for e in events), "an expected condition is not a bug"


def test_a_different_io_error_starts_the_count_again(tmp_path: Path, watched: Path) -> None:
    clock, tracker = Clock(), FakeTracker()
    processor, _ = make_processor(tmp_path, watched, clock, tracker)
    folder = write_folder(watched, "flaky", FILES)
    for problem in ("a.csv: Input/output error", "a.csv: Input/output error", "b.csv: Input/output error",
                    "b.csv: Input/output error"):
        tracker.error = FolderUnreadable(str(folder), problem)
        again = processor.process(folder)
        assert again is not None
        clock.now = again
    assert marker(folder, FAILED) is None
    tracker.error = None
    assert processor.process(folder) is None
    tracked = marker(folder)
    assert tracked is not None and tracked["run_id"] == "run-flaky"
    assert not (folder / JOURNAL).exists()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", [JOURNAL, ".nextmv-claim", ".nextmv-tracked.json", FAILED])
def test_a_fifo_under_a_state_file_name_fails_the_folder_without_blocking(
        tmp_path: Path, watched: Path, name: str) -> None:
    clock, tracker = Clock(), FakeTracker()
    processor, _ = make_processor(tmp_path, watched, clock, tracker)
    folder = write_folder(watched, "fifo", FILES)
    os.mkfifo(folder / name)

    assert processor.process(folder) is None

    failed = marker(folder, FAILED)
    assert failed is not None
    assert failed["reason"] == "invalid"
    assert failed["error"] == f"invalid folder: {name} is a FIFO, not a regular file"
    assert tracker.calls == 0, "nothing is uploaded for an invalid folder"
    assert processor.process(folder) is None, "a failed folder stays failed"
    assert tracker.calls == 0


def test_a_state_file_of_another_user_is_not_trusted_and_is_logged(tmp_path: Path, watched: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    clock, tracker = Clock(), FakeTracker()
    processor, _ = make_processor(tmp_path, watched, clock, tracker)
    folder = write_folder(watched, "forged", FILES)
    (folder / ".nextmv-tracked.json").write_text('{"run_id": "run-forged"}')
    os.chown(folder / ".nextmv-tracked.json", 12345, 12345)

    with structlog.testing.capture_logs() as events:
        assert processor.process(folder) is None

    (warning,) = [e for e in events if e["event"] == "state_file_untrusted"]
    assert (warning["log_level"], warning["file"], warning["owner_uid"]) == ("warning", ".nextmv-tracked.json", 12345)
    failed = marker(folder, FAILED)
    assert failed is not None and failed["reason"] == "invalid"
    assert "owned by uid 12345" in failed["error"]
    assert tracker.calls == 0


def test_state_owners_makes_another_users_marker_ours(tmp_path: Path, watched: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    clock, tracker = Clock(), FakeTracker()
    processor, _ = make_processor(tmp_path, watched, clock, tracker, state_owners=[12345])
    folder = write_folder(watched, "other-host", FILES)
    (folder / ".nextmv-tracked.json").write_text('{"run_id": "run-elsewhere"}')
    os.chown(folder / ".nextmv-tracked.json", 12345, 12345)

    assert processor.process(folder) is None
    assert marker(folder, FAILED) is None
    assert tracker.calls == 0
    assert processor.finished[folder] == folder.stat().st_ino
