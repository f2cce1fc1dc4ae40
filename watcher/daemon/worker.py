"""What happens to one folder when a worker takes it from the index.

`FolderProcessor.process(folder)` opens the folder once (`RunDir`), looks at it, does at most one
tracking attempt under its claim (`watcher.daemon.attempt`), and returns what it found (`index.Next`: the
folder's stage and when it is due again), for the service to `settle` in the index. An attempt's error
is judged by `watcher.daemon.verdict.verdict` (the failure table, a pure function) and the decision applied
here, in one place (`_apply`): the gate, the journal, the failed marker, the outcome counts, the log.
The current configuration is read through one reference (`config()`) each time, never copied.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import structlog

from watcher.cloud.backoff import Backoff
from watcher.config import Config, WatchConfig
from watcher.daemon.aftercheck import LateChecks
from watcher.daemon.attempt import Attempts, Held, Job
from watcher.daemon.gate import Gate
from watcher.daemon.index import NEWER_SCHEMA, FolderIndex, Next, Stage
from watcher.daemon.outcomes import Outcomes
from watcher.daemon.verdict import (
    CLAIM_BUSY_SECONDS,
    STATE_ERROR_ATTEMPT,
    Action,
    Policy,
    Verdict,
    state_error,
    verdict,
)
from watcher.errors import (
    FolderChanged,
    InvalidFolder,
    LookupInconclusive,
    NewerState,
    StateError,
    UnsafeStateFile,
    WatcherError,
)
from watcher.runfolder.completion import Activity, Completion, check_completion
from watcher.runfolder.dirhandle import DirHandle
from watcher.runfolder.markers import STATE_FILES, Journal, StateStore
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.schema import first_newer

log = structlog.get_logger("watcher.daemon.worker")

POLL_SECONDS = 2.0          # re-check of an incomplete folder that could not be watched, at first
POLL_MAX_SECONDS = 120.0    # ... then after its age, at most this long
LOOKUP_INCONCLUSIVE_HINT = ("the run may exist: nothing is posted again on an inconclusive look-up; "
                            "`nextmv-watcher track FOLDER --repost` posts anyway (a duplicate is possible)")
NEWER_HINT = ("a newer nextmv-watcher (another host, or before a rollback) works on this folder: this version "
              "never tracks, claims or changes it; upgrade this host")

AfterTracked = Callable[[Path, DirHandle], bool]   # keep, move or delete; True when the folder is gone


class FolderProcessor:
    def __init__(self, config: Callable[[], Config], index: FolderIndex, store: StateStore, attempts: Attempts,
                 gate: Gate, outcomes: Outcomes, *, watch_folder: Callable[[Path], bool],
                 unwatch_folder: Callable[[Path], None], clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, recheck_incomplete: bool = True,
                 after_tracked: AfterTracked | None = None,
                 activity: Callable[[Path], Activity | None] = lambda _: None,
                 late_checks: LateChecks | None = None) -> None:
        self.config = config
        self.index = index
        self.store = store
        self.attempts = attempts
        self.gate = gate
        self.outcomes = outcomes
        self.watch_folder = watch_folder
        self.unwatch_folder = unwatch_folder
        self.clock = clock
        self.rng = rng or random.Random()
        self.recheck_incomplete = recheck_incomplete
        self.after_tracked = after_tracked
        self.activity = activity          # what events told about a folder's open files (settle mode)
        self.late_checks = late_checks    # a second look at the uploaded files after tracking

    def process(self, folder: Path) -> Next:
        """Handle `folder` once; return what was found (for `FolderIndex.settle`). Never raises."""
        config = self.config()
        watch = config.watch_for(folder)
        if watch is None:
            return Next(Stage.GONE)   # its watched path is no longer watched
        # Bound in the context, so every event of this folder (the tracker's too) names it.
        with structlog.contextvars.bound_contextvars(folder=str(folder), application_id=watch.application_id):
            try:
                return self._process(folder, watch, config)
            except Exception as exc:  # a bug must not kill the worker; it is logged with its trace
                log.exception("folder_error", error=str(exc))
                return self._later(config, STATE_ERROR_ATTEMPT)

    def _later(self, config: Config, attempt: int) -> Next:
        backoff = Backoff(config.retry.backoff_initial_seconds, config.retry.backoff_max_seconds)
        return Next(Stage.RETRY_WAIT, at=self.clock() + backoff.delay(attempt, self.rng))

    def _process(self, folder: Path, watch: WatchConfig, config: Config) -> Next:
        entry = self.index.entry(folder)
        first_look = entry is None or not entry.seen
        # The folder is opened once; everything below goes through this descriptor (see watcher.runfolder.rundir).
        try:
            d = RunDir.open(folder)
        except FolderChanged:
            self.unwatch_folder(folder)   # vanished, or not a directory (a symlink is never a run folder)
            return Next(Stage.GONE)
        except InvalidFolder as exc:
            if first_look:
                log.warning("folder_unreadable", error=exc.problem, hint="the daemon's user may not open it")
            return Next(Stage.INCOMPLETE, at=self._poll_later(folder))
        with d:
            nxt, tracked = self._look(folder, d, watch, config, first_look)
            if nxt.stage is Stage.FINISHED:
                self.unwatch_folder(folder)
                # After the claim is gone (the claim never travels with the folder), on this very
                # directory (device and inode), never on whatever the name leads to now.
                if tracked and self.after_tracked is not None and self.after_tracked(folder, d):
                    if self.late_checks is not None:
                        self.late_checks.cancel(folder)
                    return Next(Stage.GONE)
        return nxt

    def _look(self, folder: Path, d: RunDir, watch: WatchConfig, config: Config,
              first_look: bool) -> tuple[Next, bool]:
        """(what was found, whether the folder is tracked)."""
        try:
            finished = self.store.finished(d)
        except UnsafeStateFile as exc:
            return self._attempt(folder, d, watch, config, found=exc)   # fails it under the claim
        newer = first_newer(partial(self.store.read, d), STATE_FILES)
        if newer is not None:
            return self._left_alone(folder, d, newer), False
        if finished is not None:
            return Next(Stage.FINISHED, inode=d.ino), finished == "tracked"
        if first_look:
            log.info("folder_detected")
        try:
            completion = check_completion(d, watch.files, config.completion, self.clock(), self.activity(folder))
        except FolderChanged:
            self.unwatch_folder(folder)
            return Next(Stage.GONE), False
        except InvalidFolder as exc:
            return self._attempt(folder, d, watch, config, found=exc)
        if not completion.complete:
            if not self.recheck_incomplete:
                return Next(Stage.INCOMPLETE), False   # sync: left for the daemon or the next sync
            return self._incomplete(folder, completion), False
        for sub in completion.dirs:   # our own reads of them while tracking are no news
            self.unwatch_folder(folder / sub)
        scope = self.gate.blocked(watch.application_id)
        if scope is not None:
            return Next(Stage.PARKED, scope=scope), False
        return self._attempt(folder, d, watch, config)

    def _left_alone(self, folder: Path, d: RunDir, newer: NewerState) -> Next:
        """A newer nextmv-watcher wrote one of the folder's state files: the folder is finished for this
        version (never tracked, claimed or changed); said once per folder (the index remembers why)."""
        entry = self.index.entry(folder)
        if entry is None or entry.reason != NEWER_SCHEMA:
            log.warning("state_newer", file=newer.name, schema=newer.schema, hint=NEWER_HINT)
        return Next(Stage.FINISHED, inode=d.ino, reason=NEWER_SCHEMA, detail=newer.problem)

    def _incomplete(self, folder: Path, completion: Completion) -> Next:
        """Watch the incomplete folder (in settle mode its input/ and output/ directories too: their files'
        opens and closes); look again when it settles, or by polling where events cannot tell."""
        watched = self.watch_folder(folder)
        for sub in completion.dirs:
            self.watch_folder(folder / sub)
        at = completion.recheck_at
        if at is None and (not watched or completion.poll):
            at = self._poll_later(folder)
        entry = self.index.entry(folder)
        if watched and at is None and (entry is None or entry.incomplete_since is None):
            # Newly watched, and left to events: a change made before the watch was in place (the marker a
            # producer writes right after renaming its folder into place) is told by none. One more look, now.
            at = self.clock()
        if entry is None or entry.reason != completion.reason:
            # A file open or not complete JSON is news to an operator; "settling" and the like are not.
            log.log(_LEVELS["info" if completion.poll else "debug"], "folder_incomplete", reason=completion.reason,
                    watched=watched)
        return Next(Stage.INCOMPLETE, at=at, reason=completion.reason)

    def _poll_later(self, folder: Path) -> float:
        """When to look again at a folder no watch tells us about: after 2 s at first, then after as long
        as it has been incomplete (each look doubles its age: 2, 4, 8, ... s), at most every 2 minutes."""
        now = self.clock()
        entry = self.index.entry(folder)
        since = entry.incomplete_since if entry is not None and entry.incomplete_since is not None else now
        return now + min(POLL_MAX_SECONDS, max(POLL_SECONDS, now - since))

    def _attempt(self, folder: Path, d: RunDir, watch: WatchConfig, config: Config,
                 found: InvalidFolder | None = None) -> tuple[Next, bool]:
        """One attempt under the claim; an error is judged and applied while the claim is still held.
        `found`: the folder was found invalid before it was claimed (it is failed under the claim)."""
        job = Job(watch.application_id, watch.instance_id, watch.files, watch.format, config.completion.marker)
        try:
            with self.attempts.claimed(d) as held:
                if held is None:
                    log.debug("folder_claimed_elsewhere", holder=self.attempts.claims.holder(d))
                    return Next(Stage.RETRY_WAIT, at=self.clock() + CLAIM_BUSY_SECONDS,
                                reason="claimed_elsewhere"), False
                try:
                    return self._track(folder, d, held, job, found)
                except NewerState as exc:   # written since we looked: our claim goes, nothing else is touched
                    return self._left_alone(folder, d, exc), False
                except WatcherError as exc:
                    return self._apply(folder, d, job.application_id, exc, held.journal_read, config), False
        except StateError as exc:   # the claim itself could not be written: nothing else may be either
            return self._waits_for_state(folder, state_error(exc, None, in_a_row=self._state_errors(folder) + 1),
                                         pending="claim"), False

    def _track(self, folder: Path, d: RunDir, held: Held, job: Job,
               found: InvalidFolder | None) -> tuple[Next, bool]:
        if found is not None:
            raise found
        # Another process may have finished the folder between our marker check and our claim (a newer
        # version too: then its files are not ours to read or act on).
        newer = first_newer(partial(self.store.read, d), STATE_FILES)
        if newer is not None:
            raise newer
        finished = held.recheck()
        if finished is not None:
            return Next(Stage.FINISHED, inode=d.ino), finished == "tracked"
        journal = held.journal()
        now = self.clock()
        if journal.next_attempt_at is not None and journal.next_attempt_at > now:   # (after a restart)
            waits_for = "lookup_inconclusive" if journal.lookups_inconclusive and journal.intents else None
            return Next(Stage.RETRY_WAIT, at=journal.next_attempt_at, reason=waits_for), False
        run = held.inspect(job)
        log.info("folder_complete", status=run.status, artifacts=[a.role for a in run.artifacts])
        outcome = held.track(run, job)
        for warning in outcome.warnings:
            log.warning("folder_warning", warning=warning, run_id=outcome.run_id)
        log.info("run_tracked", run_id=outcome.run_id, adopted=outcome.adopted)
        if self.late_checks is not None:
            self.late_checks.schedule(run, (d.dev, d.ino), outcome.run_id, job.application_id)
        self.outcomes.record(folder, job.application_id, "tracked", "adopted" if outcome.adopted else "posted")
        return Next(Stage.FINISHED, inode=d.ino), True

    # -- the failure table's decision, applied --------------------------------------------------

    def _apply(self, folder: Path, d: RunDir, app: str, error: WatcherError, journal: Journal | None,
               config: Config) -> Next:
        retry = config.retry
        policy = Policy(retry.max_attempts, Backoff(retry.backoff_initial_seconds, retry.backoff_max_seconds),
                        config.completion.settle_seconds)
        v = verdict(error, journal or Journal(), policy=policy, application_id=app,
                    blocked_by=self.gate.blocked(app), rng=self.rng, state_errors=self._state_errors(folder))
        if v.untrusted and isinstance(error, UnsafeStateFile):
            log.warning("state_file_untrusted", file=error.name, owner_uid=error.uid,
                        hint="a .nextmv-* file the daemon did not write; list its owner in state_owners "
                             "if another host's daemon wrote it")
        if v.action is Action.FAIL:
            return self._fail(folder, d, app, v, journal if v.trust_journal else None, config)
        if v.action is Action.PARK:
            return self._park(app, v)
        if v.reason == "state_error":
            # Kept for `scan` when the journal was read (never over one that could not be), best effort:
            # the same full disk may refuse it too, and that is already being said.
            if journal is not None and v.journal is not None:
                with contextlib.suppress(StateError, InvalidFolder):
                    self.store.save_journal(d, v.journal)
            return self._waits_for_state(folder, v)
        at = v.at if v.at is not None else self.clock() + (v.delay or 0.0)
        if v.journal is not None:
            try:
                v.journal.next_attempt_at = at if v.action is Action.RETRY else v.journal.next_attempt_at
                self.store.save_journal(d, v.journal)
            except (StateError, InvalidFolder) as exc:
                log.warning("state_error", error=str(exc), pending="journal")
        fields: dict[str, object] = {"reason": v.reason, "error": v.error}
        if v.event == "folder_waiting":
            fields = {"reason": v.error}
        elif isinstance(error, LookupInconclusive):
            fields.update(cause=error.cause, retry_in=round(at - self.clock(), 2))
            if v.event == "run_lookup_inconclusive":
                fields["hint"] = LOOKUP_INCONCLUSIVE_HINT
        elif v.level == "warning" and v.journal is not None:
            fields.update(attempt=v.journal.attempts, retry_in=round(at - self.clock(), 2))
        elif v.event == "folder_claim_lost":
            fields = {"error": v.error}
        log.log(_LEVELS[v.level], v.event, **fields)
        if v.action is Action.RETRY:
            self.outcomes.record(folder, app, "retried", v.reason, v.error)
        return Next(Stage.RETRY_WAIT, at=at, reason=v.reason)

    def _state_errors(self, folder: Path) -> int:
        """The state errors in a row this folder met before (the index keeps the count)."""
        entry = self.index.entry(folder)
        return entry.state_errors if entry is not None else 0

    def _waits_for_state(self, folder: Path, v: Verdict, pending: str | None = None) -> Next:
        """Our own state could not be written: a warning (an operator frees space or fixes a mount; the
        folder is not at fault), and the folder waits in `retry_wait` with the reason and the error."""
        delay = v.delay or 0.0
        fields = {"pending": pending} if pending else {}
        log.warning("state_error", error=v.error, retry_in=round(delay, 2), **fields)
        return Next(Stage.RETRY_WAIT, at=self.clock() + delay, reason=v.reason, detail=v.error)

    def _park(self, app: str, v: Verdict) -> Next:
        if v.pause == "auth":
            self.gate.key_rejected(v.error)
        elif v.pause == "application_not_found":
            self.gate.application_missing(app, v.error)
        else:
            log.info("folder_parked", reason="api paused", error=v.error)
        return Next(Stage.PARKED, scope=v.scope)

    def _fail(self, folder: Path, d: RunDir, app: str, v: Verdict, journal: Journal | None, config: Config) -> Next:
        """Write the failed marker (the attempts counted by the verdict); keep open intents, so that a
        `retry` looks the run up first; drop the rest of the journal (unless it is not ours)."""
        attempts = v.journal.attempts if v.journal is not None else 1
        try:
            self.store.mark_failed(d, v.error, attempts, self.clock(), reason=v.reason)
            if journal is not None and journal.intents:
                self.store.save_journal(d, Journal(intents=journal.intents, uploads=journal.uploads))
            elif v.trust_journal:
                self.store.clear_journal(d)
        except StateError as exc:
            return self._waits_for_state(folder, state_error(exc, None, in_a_row=self._state_errors(folder) + 1),
                                         pending="failed marker")
        except InvalidFolder as exc:
            log.error("state_error", error=str(exc), pending="failed marker")
            return self._later(config, STATE_ERROR_ATTEMPT)
        self.outcomes.record(folder, app, "failed", v.reason, v.error)
        log.error("folder_failed", reason=v.reason, error=v.error, attempts=attempts)
        return Next(Stage.FINISHED, inode=d.ino)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
