"""What happens to one folder when a worker takes it from the queue.

`FolderProcessor.process(folder)` looks at the folder, does at most one tracking attempt, and
returns when to look at it again (or None). Every outcome is decided by the error's type, in
one table (also in the README):

| failure                                    | what happens                                              |
|--------------------------------------------|-----------------------------------------------------------|
| presigned PUT answered 403 (URL expired)   | fresh upload URL, upload again (inside the tracker)       |
| connection error, timeout, 429, 5xx        | retry with backoff; 429 does not count as an attempt; when|
|                                            | every request fails, the gate pauses all work together    |
| API answers 401 or 403 (key rejected)      | all work pauses, one error logged; no folder marked failed|
| application not found (404)                | that application pauses (configuration error)             |
| POST runs answered 400, 409, 413 or 422    | the folder is marked failed with the API's message        |
| a file changed or vanished during upload   | retried later from the start, not counted                 |
| the folder itself is invalid               | marked failed at once, naming the problem                 |
| our own state cannot be written            | logged, retried later, not counted                        |
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watcher.claim import Claims, LeaseKeeper
from watcher.completion import check_completion
from watcher.config import Config, WatchConfig
from watcher.errors import (
    ApplicationNotFound,
    AuthError,
    ClaimLost,
    FolderChanged,
    InvalidFolder,
    RejectedError,
    RetryLater,
    StateError,
    TransientError,
    UncertainError,
)
from watcher.folder import inspect_folder
from watcher.retry import GLOBAL, ApiGate, Backoff
from watcher.state import Journal, StateStore
from watcher.tracker import Tracker

log = structlog.get_logger("watcher.worker")

POLL_SECONDS = 2.0          # re-check of an incomplete folder that could not be watched
CLAIM_BUSY_SECONDS = 15.0   # another process holds the claim: look again after this
CHANGED_SECONDS = 2.0       # a folder changed under us: look again after at least this


@dataclass
class Counters:
    """What the workers did, for status and tests. Updated under a lock."""

    tracked: int = 0
    failed: int = 0
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


OutcomeHook = Callable[[Path, str, str, str, str], None]   # folder, application_id, outcome, reason, error


class FolderProcessor:
    def __init__(self, config: Config, store: StateStore, claims: Claims, keeper: LeaseKeeper,
                 tracker: Tracker, gate: ApiGate, *, watch_folder: Callable[[Path], bool],
                 unwatch_folder: Callable[[Path], None], clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, recheck_incomplete: bool = True,
                 on_outcome: OutcomeHook | None = None,
                 after_tracked: Callable[[Path], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.claims = claims
        self.keeper = keeper
        self.tracker = tracker
        self.gate = gate
        self.watch_folder = watch_folder
        self.unwatch_folder = unwatch_folder
        self.clock = clock
        self.rng = rng or random.Random()
        self.recheck_incomplete = recheck_incomplete
        self.backoff = Backoff(config.retry.backoff_initial_seconds, config.retry.backoff_max_seconds)
        self.on_outcome = on_outcome
        self.after_tracked = after_tracked
        # Finished folders by path, with their inode: a new folder reusing a name is not finished.
        self.finished: dict[Path, int] = {}
        self.counters = Counters()
        self.incomplete_since: dict[Path, float] = {}   # first time each incomplete folder was seen
        self._seen: set[Path] = set()

    def process(self, folder: Path) -> float | None:
        """Handle `folder` once; return when to look at it again, or None. Never raises."""
        watch = self.config.watch_for(folder)
        if watch is None:
            return None
        # Bound in the context, so every event of this folder (the tracker's too) names it.
        with structlog.contextvars.bound_contextvars(folder=str(folder), application_id=watch.application_id):
            try:
                return self._process(folder, watch)
            except Exception as exc:  # a bug must not kill the worker; it is logged with its trace
                log.exception("folder_error", error=str(exc))
                return self.clock() + self.backoff.delay(3, self.rng)

    def _forget(self, folder: Path) -> None:
        """Drop what we keep about a folder that is no longer pending (finished or gone)."""
        self._seen.discard(folder)
        self.incomplete_since.pop(folder, None)
        self.unwatch_folder(folder)

    def _finish(self, folder: Path) -> None:
        try:
            self.finished[folder] = folder.stat().st_ino
        except OSError:
            self.finished.pop(folder, None)
        self._forget(folder)

    def _outcome(self, folder: Path, app: str, outcome: str, reason: str, error: str = "") -> None:
        self.counters.add(outcome)
        if self.on_outcome is not None:
            self.on_outcome(folder, app, outcome, reason, error)

    def _process(self, folder: Path, watch: WatchConfig) -> float | None:
        if not folder.is_dir() or folder.is_symlink():
            self._forget(folder)
            return None
        if self.store.finished(folder) is not None:
            self._finish(folder)
            return None
        now = self.clock()
        if folder not in self._seen:
            self._seen.add(folder)
            log.info("folder_detected")
        completion = check_completion(folder, watch.files, self.config.completion, now)
        if not completion.complete:
            self.incomplete_since.setdefault(folder, now)
            if not self.recheck_incomplete:
                return None   # sync: an incomplete folder is left for the daemon or the next sync
            watched = self.watch_folder(folder)
            if completion.recheck_at is not None:
                return completion.recheck_at
            return None if watched else now + POLL_SECONDS
        self.incomplete_since.pop(folder, None)
        journal = self.store.journal(folder)
        if journal.next_attempt_at is not None and journal.next_attempt_at > now:
            return journal.next_attempt_at
        if self.gate.park(watch.application_id, folder):
            return None
        claim = self.claims.acquire(folder)
        if claim is None:
            log.debug("folder_claimed_elsewhere", holder=self.claims.holder(folder))
            return now + CLAIM_BUSY_SECONDS
        self.keeper.hold(claim)
        try:
            # Another process may have finished the folder between our marker check and our claim.
            if self.store.finished(folder) is not None:
                self._finish(folder)
                return None
            again = self._attempt(folder, watch, lambda: self.claims.verify(claim))
        finally:
            self.keeper.drop(claim)
            self.claims.release(claim)
        # Moving or deleting happens after the claim is gone, so the claim never travels with the folder.
        if again is None and self.after_tracked is not None and self.store.finished(folder) == "tracked":
            self.after_tracked(folder)
        return again

    def _attempt(self, folder: Path, watch: WatchConfig, check_claim: Callable[[], None]) -> float | None:
        app = watch.application_id
        try:
            run = inspect_folder(folder, watch.files, watch.format, self.config.completion.marker)
            log.info("folder_complete", status=run.status, artifacts=[a.role for a in run.artifacts])
            outcome = self.tracker.track(run, app, run.instance_id or watch.instance_id, check_claim)
        except InvalidFolder as exc:
            return self._fail(folder, app, f"invalid folder: {exc.problem}", "invalid")
        except RejectedError as exc:
            return self._fail(folder, app, f"rejected by the API: {exc}", "rejected")
        except FolderChanged as exc:
            log.info("folder_retrying", reason="changed", error=exc.problem)
            self._outcome(folder, app, "retried", "changed", exc.problem)
            return self.clock() + max(CHANGED_SECONDS, self.config.completion.settle_seconds)
        except RetryLater as exc:
            log.info("folder_waiting", reason=str(exc))
            return exc.at
        except ClaimLost as exc:
            log.warning("folder_claim_lost", error=str(exc))
            return self.clock() + CLAIM_BUSY_SECONDS
        except AuthError as exc:
            if self.gate.close(GLOBAL, "auth", str(exc)):
                log.error("api_paused", reason="auth", error=str(exc),
                           hint="check the API key; work resumes by itself once it is accepted")
            self.gate.park(app, folder)
            return None
        except ApplicationNotFound as exc:
            if self.gate.close(app, "application_not_found", str(exc)):
                log.error("application_paused", reason="application_not_found", error=str(exc))
            self.gate.park(app, folder)
            return None
        except TransientError as exc:
            return self._transient(folder, app, exc)
        except StateError as exc:
            log.error("state_error", error=str(exc))
            return self.clock() + self.backoff.delay(3, self.rng)
        for warning in outcome.warnings:
            log.warning("folder_warning", warning=warning, run_id=outcome.run_id)
        log.info("run_tracked", run_id=outcome.run_id, adopted=outcome.adopted)
        self._outcome(folder, app, "tracked", "adopted" if outcome.adopted else "posted")
        self._finish(folder)
        return None

    def _transient(self, folder: Path, app: str, exc: TransientError) -> float | None:
        if self.gate.blocked(app) is not None and self.gate.park(app, folder):
            log.info("folder_parked", reason="api paused", error=str(exc))
            return None
        journal = self.store.journal(folder)
        # Throttling and POSTs of unknown outcome are not the folder's fault: they do not use up attempts.
        throttled = exc.status == 429
        if not throttled and not isinstance(exc, UncertainError):
            journal.attempts += 1
        journal.last_error = str(exc)
        if journal.attempts >= self.config.retry.max_attempts:
            return self._fail(folder, app, f"gave up after {journal.attempts} attempts: {exc}", "exhausted",
                              journal)
        delay = self.backoff.delay(max(1, journal.attempts), self.rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        journal.next_attempt_at = self.clock() + delay
        self.store.save_journal(folder, journal)
        self._outcome(folder, app, "retried", "throttled" if throttled else "api_error", str(exc))
        log.warning("folder_retrying", reason="throttled" if throttled else "api_error", error=str(exc),
                     attempt=journal.attempts, retry_in=round(delay, 2))
        return journal.next_attempt_at

    def _fail(self, folder: Path, app: str, error: str, reason: str,
              journal: Journal | None = None) -> float | None:
        """Mark the folder failed. `journal` is the caller's up-to-date one when it has it (its attempts
        already counted); else it is read and this attempt counted. Returns None, or when to try again
        if the marker could not be written."""
        try:
            if journal is None:
                journal = self.store.journal(folder)
                journal.attempts += 1
            attempts = journal.attempts
            self.store.mark_failed(folder, error, attempts, self.clock(), reason=reason)
            if journal.intents:
                # A POST may have created the run: keep the intents so that `retry` looks it up first.
                self.store.save_journal(folder, Journal(intents=journal.intents, uploads=journal.uploads))
            else:
                self.store.clear_journal(folder)
        except StateError as exc:
            log.error("state_error", error=str(exc), pending="failed marker")
            return self.clock() + self.backoff.delay(3, self.rng)
        self._outcome(folder, app, "failed", reason, error)
        log.error("folder_failed", reason=reason, error=error, attempts=attempts)
        self._finish(folder)
        return None
