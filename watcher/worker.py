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
| a `.nextmv-*` file that is not ours        | marked failed (invalid) at once, naming the file; an      |
| (FIFO, symlink, too big, a stranger's)     | untrusted owner is also logged as a warning               |
| the same I/O error 3 times in a row        | marked failed (invalid), naming the error                 |
| our own state cannot be written            | logged, retried later, not counted                        |
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watcher.claim import CLAIM, Claim, Claims, LeaseKeeper
from watcher.completion import check_completion
from watcher.config import Config, WatchConfig
from watcher.errors import (
    ApplicationNotFound,
    AuthError,
    ClaimLost,
    FolderChanged,
    FolderUnreadable,
    InvalidFolder,
    RejectedError,
    RetryLater,
    StateError,
    TransientError,
    UncertainError,
    UnsafeStateFile,
)
from watcher.folder import inspect_folder
from watcher.retry import GLOBAL, ApiGate, Backoff
from watcher.rundir import RunDir
from watcher.state import Journal, StateStore
from watcher.tracker import Tracker

log = structlog.get_logger("watcher.worker")

POLL_SECONDS = 2.0          # re-check of an incomplete folder that could not be watched, at first
POLL_MAX_SECONDS = 120.0    # ... then after its age, at most this long
SAME_ERROR_LIMIT = 3        # the same I/O error this many times in a row: the folder is invalid
CLAIM_BUSY_SECONDS = 15.0   # another process holds the claim: look again after this
CHANGED_SECONDS = 2.0       # a folder changed under us: look again after at least this


def _check_claim_file(d: RunDir, claim: Claim, found: InvalidFolder | None) -> None:
    """A claim file that was not ours (a FIFO, a stranger's) was moved out of the way: invalid. So is a
    folder found invalid before it was claimed (`found`)."""
    if claim.replaced is not None:
        raise UnsafeStateFile(d.label, CLAIM, claim.replaced)
    if found is not None:
        raise found


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
                 after_tracked: Callable[[Path, RunDir], None] | None = None) -> None:
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

    def _finish(self, folder: Path, d: RunDir) -> None:
        self.finished[folder] = d.ino
        self._forget(folder)

    def _outcome(self, folder: Path, app: str, outcome: str, reason: str, error: str = "") -> None:
        self.counters.add(outcome)
        if self.on_outcome is not None:
            self.on_outcome(folder, app, outcome, reason, error)

    def _process(self, folder: Path, watch: WatchConfig) -> float | None:
        # The folder is opened once; everything below goes through this descriptor (see watcher.rundir).
        try:
            d = RunDir.open(folder)
        except FolderChanged:
            self._forget(folder)   # vanished, or not a directory (a symlink is never a run folder)
            return None
        except InvalidFolder as exc:
            now = self.clock()
            if folder not in self._seen:
                self._seen.add(folder)
                log.warning("folder_unreadable", error=exc.problem, hint="the daemon's user may not open it")
            self.incomplete_since.setdefault(folder, now)   # looked at less often as time goes by
            return self._poll_later(folder, now)
        with d:
            again = self._process_open(folder, d, watch)
            # Moving or deleting happens after the claim is gone, so the claim never travels with the
            # folder; it acts on this very directory (device and inode), never on whatever the name is now.
            if again is None and self.after_tracked is not None and folder in self.finished \
                    and self._is_tracked(d):
                self.after_tracked(folder, d)
        return again

    def _is_tracked(self, d: RunDir) -> bool:
        try:
            return self.store.finished(d) == "tracked"
        except InvalidFolder:
            return False

    def _process_open(self, folder: Path, d: RunDir, watch: WatchConfig) -> float | None:
        try:
            finished = self.store.finished(d)
        except UnsafeStateFile:
            return self._claimed(folder, d, watch)   # the attempt meets it again and fails the folder
        if finished is not None:
            self._finish(folder, d)
            return None
        now = self.clock()
        if folder not in self._seen:
            self._seen.add(folder)
            log.info("folder_detected")
        try:
            completion = check_completion(d, watch.files, self.config.completion, now)
        except FolderChanged:
            self._forget(folder)
            return None
        except InvalidFolder:
            return self._claimed(folder, d, watch)
        if not completion.complete:
            self.incomplete_since.setdefault(folder, now)
            if not self.recheck_incomplete:
                return None   # sync: an incomplete folder is left for the daemon or the next sync
            watched = self.watch_folder(folder)
            if completion.recheck_at is not None:
                return completion.recheck_at
            return None if watched else self._poll_later(folder, now)
        self.incomplete_since.pop(folder, None)
        try:
            journal = self.store.journal(d)
        except InvalidFolder as exc:
            return self._claimed(folder, d, watch, exc)
        except StateError as exc:
            log.error("state_error", error=str(exc))
            return now + self.backoff.delay(3, self.rng)
        if journal.next_attempt_at is not None and journal.next_attempt_at > now:
            return journal.next_attempt_at
        if self.gate.park(watch.application_id, folder):
            return None
        return self._claimed(folder, d, watch)

    def _poll_later(self, folder: Path, now: float) -> float:
        """When to look again at a folder no watch tells us about: after 2 s at first, then after as long
        as it has been incomplete (each look doubles its age: 2, 4, 8, ... s), at most every 2 minutes."""
        age = now - self.incomplete_since.get(folder, now)
        return now + min(POLL_MAX_SECONDS, max(POLL_SECONDS, age))

    def _claimed(self, folder: Path, d: RunDir, watch: WatchConfig,
                 found: InvalidFolder | None = None) -> float | None:
        """Claim the folder, run one attempt (or, when `found` says the folder is invalid, fail it), release
        the claim."""
        try:
            claim = self.claims.acquire(d)
        except StateError as exc:
            log.error("state_error", error=str(exc))
            return self.clock() + self.backoff.delay(3, self.rng)
        if claim is None:
            log.debug("folder_claimed_elsewhere", holder=self.claims.holder(d))
            return self.clock() + CLAIM_BUSY_SECONDS
        self.keeper.hold(claim)
        try:
            return self._attempt(folder, d, watch, claim, found)
        finally:
            self.keeper.drop(claim)
            self.claims.release(claim)

    def _attempt(self, folder: Path, d: RunDir, watch: WatchConfig, claim: Claim,
                 found: InvalidFolder | None = None) -> float | None:
        app = watch.application_id
        try:
            _check_claim_file(d, claim, found)
            # Another process may have finished the folder between our marker check and our claim.
            if self.store.finished(d) is not None:
                self._finish(folder, d)
                return None
            run = inspect_folder(d, watch.files, watch.format, self.config.completion.marker)
            log.info("folder_complete", status=run.status, artifacts=[a.role for a in run.artifacts])
            outcome = self.tracker.track(run, app, run.instance_id or watch.instance_id,
                                         lambda: self.claims.verify(claim))
        except UnsafeStateFile as exc:
            if exc.untrusted:
                log.warning("state_file_untrusted", file=exc.name, owner_uid=exc.uid,
                            hint="a .nextmv-* file the daemon did not write; list its owner in state_owners "
                                 "if another host's daemon wrote it")
            return self._fail(folder, d, app, f"invalid folder: {exc.problem}", "invalid", trust_journal=False)
        except InvalidFolder as exc:
            return self._fail(folder, d, app, f"invalid folder: {exc.problem}", "invalid")
        except RejectedError as exc:
            return self._fail(folder, d, app, f"rejected by the API: {exc}", "rejected")
        except FolderUnreadable as exc:
            return self._unreadable(folder, d, app, exc)
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
            return self._transient(folder, d, app, exc)
        except StateError as exc:
            log.error("state_error", error=str(exc))
            return self.clock() + self.backoff.delay(3, self.rng)
        for warning in outcome.warnings:
            log.warning("folder_warning", warning=warning, run_id=outcome.run_id)
        log.info("run_tracked", run_id=outcome.run_id, adopted=outcome.adopted)
        self._outcome(folder, app, "tracked", "adopted" if outcome.adopted else "posted")
        self._finish(folder, d)
        return None

    def _unreadable(self, folder: Path, d: RunDir, app: str, exc: FolderUnreadable) -> float | None:
        """An I/O error that is not a change: retried like one, but the same error `SAME_ERROR_LIMIT`
        times in a row makes the folder invalid (a name too long, a broken disk: it will not pass)."""
        try:
            journal = self.store.journal(d)
            journal.repeats = journal.repeats + 1 if journal.last_error == exc.problem else 1
            journal.last_error = exc.problem
            if journal.repeats >= SAME_ERROR_LIMIT:
                return self._fail(folder, d, app, f"invalid folder: {exc.problem} ({journal.repeats} times in a row)",
                                  "invalid", journal)
            self.store.save_journal(d, journal)
        except (StateError, InvalidFolder) as err:
            log.error("state_error", error=str(err))
        log.info("folder_retrying", reason="unreadable", error=exc.problem)
        self._outcome(folder, app, "retried", "changed", exc.problem)
        return self.clock() + max(CHANGED_SECONDS, self.config.completion.settle_seconds)

    def _transient(self, folder: Path, d: RunDir, app: str, exc: TransientError) -> float | None:
        if self.gate.blocked(app) is not None and self.gate.park(app, folder):
            log.info("folder_parked", reason="api paused", error=str(exc))
            return None
        try:
            journal = self.store.journal(d)
        except UnsafeStateFile as err:   # replaced during the attempt (a FIFO, a stranger's file)
            return self._fail(folder, d, app, f"invalid folder: {err.problem}", "invalid", trust_journal=False)
        except StateError as err:
            log.error("state_error", error=str(err))
            return self.clock() + self.backoff.delay(3, self.rng)
        # Throttling and POSTs of unknown outcome are not the folder's fault: they do not use up attempts.
        throttled = exc.status == 429
        if not throttled and not isinstance(exc, UncertainError):
            journal.attempts += 1
        journal.last_error = str(exc)
        if journal.attempts >= self.config.retry.max_attempts:
            return self._fail(folder, d, app, f"gave up after {journal.attempts} attempts: {exc}", "exhausted",
                              journal)
        delay = self.backoff.delay(max(1, journal.attempts), self.rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        journal.next_attempt_at = self.clock() + delay
        try:
            self.store.save_journal(d, journal)
        except StateError as err:   # the attempt is not counted; the retry is scheduled all the same
            log.error("state_error", error=str(err))
        self._outcome(folder, app, "retried", "throttled" if throttled else "api_error", str(exc))
        log.warning("folder_retrying", reason="throttled" if throttled else "api_error", error=str(exc),
                     attempt=journal.attempts, retry_in=round(delay, 2))
        return journal.next_attempt_at

    def _fail(self, folder: Path, d: RunDir, app: str, error: str, reason: str,
              journal: Journal | None = None, *, trust_journal: bool = True) -> float | None:
        """Mark the folder failed. `journal` is the caller's up-to-date one when it has it (its attempts
        already counted); else it is read and this attempt counted (unless it is not ours: then it is
        left alone and this counts as the first attempt). Returns None, or when to try again if the
        marker could not be written."""
        try:
            if journal is None:
                journal = Journal()
                if trust_journal:
                    with contextlib.suppress(InvalidFolder):
                        journal = self.store.journal(d)
                journal.attempts += 1
            attempts = journal.attempts
            self.store.mark_failed(d, error, attempts, self.clock(), reason=reason)
            if journal.intents:
                # A POST may have created the run: keep the intents so that `retry` looks it up first.
                self.store.save_journal(d, Journal(intents=journal.intents, uploads=journal.uploads))
            elif trust_journal:
                self.store.clear_journal(d)
        except StateError as exc:
            log.error("state_error", error=str(exc), pending="failed marker")
            return self.clock() + self.backoff.delay(3, self.rng)
        self._outcome(folder, app, "failed", reason, error)
        log.error("folder_failed", reason=reason, error=error, attempts=attempts)
        self._finish(folder, d)
        return None
