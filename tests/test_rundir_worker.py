"""The worker's flow through one open folder, attacked between its steps: a state file swapped for a FIFO
while the API fails, our own state unwritable. Outcomes are decided by type; nothing a producer or a
full disk causes is logged as a bug (`folder_error`, with its traceback).

Real directories; the tracker is a stand-in that fails the way the real one does."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import FAILED, marker, write_config, write_folder
from hostile_fs import open_fds

from watcher.claim import Claims, LeaseKeeper
from watcher.config import load_config
from watcher.errors import StateError, TransientError
from watcher.folder import RunFolder
from watcher.retry import ApiGate
from watcher.state import JOURNAL, Journal, StateStore
from watcher.worker import FolderProcessor

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _no_fd_leak() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before, "a descriptor was left open"


class FailingTracker:
    """Fails like the real tracker when the API answers 503, after `meanwhile` (the producer's move)."""

    def __init__(self, meanwhile: Callable[[RunFolder], None]) -> None:
        self.meanwhile = meanwhile

    def track(self, run: RunFolder, application_id: str, instance_id: str | None,
              check_claim: Callable[[], None] = lambda: None) -> Any:
        self.meanwhile(run)
        raise TransientError("HTTP 503 from POST /runs", status=503)


class DiskFullStore(StateStore):
    def save_journal(self, folder: Any, journal: Journal) -> None:
        raise StateError(f"{folder}: cannot write {JOURNAL}: No space left on device")


def process(tmp_path: Path, watched: Path, tracker: FailingTracker,
            store: StateStore | None = None) -> tuple[float | None, list[dict[str, Any]], Path]:
    config = load_config(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", [(watched, "app-1")],
                                      tmp_path / "state"))
    store = store or StateStore.of(config)
    claims = Claims(clock=lambda: NOW, store=store)
    processor = FolderProcessor(config, store, claims, LeaseKeeper(claims), tracker,  # type: ignore[arg-type]
                                ApiGate(lambda: NOW), watch_folder=lambda folder: True,
                                unwatch_folder=lambda folder: None, clock=lambda: NOW)
    folder = write_folder(watched, "run-1", {"input.json": b"{}", "output.json": b"{}"})
    with structlog.testing.capture_logs() as events:
        again = processor.process(folder)
    return again, events, folder


def test_a_journal_swapped_for_a_fifo_during_a_failed_attempt_fails_the_folder_naming_it(
        tmp_path: Path, watched: Path) -> None:
    def plant_fifo(run: RunFolder) -> None:
        os.mkfifo(run.path / JOURNAL)   # nobody writes: reading it would block the worker

    again, events, folder = process(tmp_path, watched, FailingTracker(plant_fifo))
    assert "folder_error" not in [e["event"] for e in events]
    assert again is None
    failed = marker(folder, FAILED)
    assert failed is not None and f"{JOURNAL} is a FIFO" in failed["error"]


def test_a_journal_that_cannot_be_saved_after_a_failed_attempt_is_a_state_error_not_a_bug(
        tmp_path: Path, watched: Path) -> None:
    again, events, folder = process(tmp_path, watched, FailingTracker(lambda run: None),
                                    DiskFullStore(tmp_path / "state"))
    names = [e["event"] for e in events]
    assert "folder_error" not in names
    assert "state_error" in names
    assert again is not None and again > NOW
    assert sorted(os.listdir(folder)) == ["DONE", "input.json", "output.json"]
