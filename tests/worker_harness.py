"""A FolderProcessor with real directories, a real index, gate, store and claims, a stand-in tracker and a
stepped clock: `step(folder)` does what one worker turn does (take it when due, process, settle)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import write_config

from watcher.cloud.tracker import Outcome
from watcher.config import Config, load_config
from watcher.daemon.attempt import Attempts
from watcher.daemon.gate import Gate
from watcher.daemon.index import FolderIndex, Next
from watcher.daemon.lease import LeaseKeeper
from watcher.daemon.outcomes import Outcomes
from watcher.daemon.worker import FolderProcessor
from watcher.runfolder.claims import Claims
from watcher.runfolder.folder import RunFolder
from watcher.runfolder.markers import Journal, StateStore

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTracker:
    """Stands in for the upload-and-track sequence: runs `meanwhile(run, journal)` if set, then raises
    `error` when set, else marks the folder tracked through the open folder (as the real one does) and
    drops its journal."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.meanwhile: Callable[[RunFolder, Journal], None] | None = None
        self.calls = 0
        self.store: StateStore | None = None
        self.journals: list[Journal] = []

    def track(self, run: RunFolder, application_id: str, instance_id: str | None,
              check_claim: Callable[[], None] = lambda: None, journal: Journal | None = None) -> Outcome:
        self.calls += 1
        assert journal is not None, "the attempt hands its journal to the tracker"
        self.journals.append(journal)
        if self.meanwhile is not None:
            self.meanwhile(run, journal)
        if self.error is not None:
            raise self.error
        assert self.store is not None
        self.store.mark_tracked(run.handle, f"run-{run.name}", application_id, T0, name=run.name, token="t" * 32)
        self.store.clear_journal(run.handle)
        return Outcome(run_id=f"run-{run.name}", adopted=False)


class Harness:
    def __init__(self, tmp_path: Path, watched: Path, *, store_factory: Callable[[Config], StateStore] | None = None,
                 watchable: bool = False, **overrides: Any) -> None:
        self.clock = Clock()
        self.config = load_config(write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", [(watched, "app-1")],
                                               tmp_path / "state", **overrides))
        self.index = FolderIndex(self.clock)
        self.outcomes = Outcomes(self.clock)
        self.store = store_factory(self.config) if store_factory else StateStore.of(self.config)
        self.tracker = FakeTracker()
        self.tracker.store = self.store
        self.claims = Claims(clock=self.clock, store=self.store)
        self.gate = Gate(self.clock, config=lambda: self.config, client=None, unpark=self.index.unpark)
        self.watch_requests: list[Path] = []
        attempts = Attempts(self.store, self.claims, LeaseKeeper(self.claims), self.tracker)  # type: ignore[arg-type]

        def watch_folder(folder: Path) -> bool:
            self.watch_requests.append(folder)
            return watchable   # False: as past the inotify watch limit, the folder is polled

        self.processor = FolderProcessor(lambda: self.config, self.index, self.store, attempts, self.gate,
                                         self.outcomes, watch_folder=watch_folder,
                                         unwatch_folder=lambda folder: None, clock=self.clock,
                                         rng=random.Random(0))

    def step(self, folder: Path) -> Next:
        """One worker turn on `folder`, which must be due now (offered first when the index does not hold
        it): take it, process it, settle what was found. Returns that."""
        if folder not in self.index or (folder not in self.index.snapshot() and folder not in self.index.in_flight()):
            self.index.offer(folder)
        taken = self.index.pop_ready()
        assert taken == folder, f"{folder} is not due at {self.clock.now} (got {taken})"
        found = self.processor.process(folder)
        self.index.settle(folder, found)
        return found
