"""The failure table, as a pure function: what an attempt's error means for its folder.

`verdict(error, journal, ...)` decides; `FolderProcessor` applies the decision in one place (the
gate, the journal, the failed marker, the log, the index). Nothing here does I/O or reads a clock.

| error                                      | action | reason                | attempt | when                   |
|--------------------------------------------|--------|-----------------------|---------|------------------------|
| the folder is invalid (`InvalidFolder`)    | fail   | invalid               | used    | at once                |
| ... an artifact over api.max_upload_bytes  | fail   | invalid               | used    | at once, before uploads|
| ... a PUT answered 400 EntityTooLarge      | fail   | invalid               | used    | at once                |
| a `.nextmv-*` file that is not ours        | fail   | invalid               | first   | (journal not trusted)  |
| the API refused the run (`RejectedError`:  | fail   | rejected              | used    | at once                |
|   POST runs 400/409/413/422, or 404 with   |        |                       |         |                        |
|   the application confirmed present)       |        |                       |         |                        |
| the same I/O error 3 times in a row        | fail   | invalid               | -       | at once                |
| an I/O error reading the folder            | retry  | unreadable            | -       | max(2 s, settle)       |
| a file changed or vanished                 | retry  | changed               | -       | max(2 s, settle)       |
| the run list may lag (`RetryLater`)        | wait   | lookup                | -       | the time it names      |
| the look-up could not see the whole list   | retry  | lookup_inconclusive   | -       | backoff (look-ups in a |
|   (`LookupInconclusive`): never re-posted; |        |                       |         | row), warned once      |
|   parked instead while a pause is on       |        |                       |         |                        |
| the claim was taken over (`ClaimLost`)     | wait   | claim_lost            | -       | 15 s                   |
| the key was rejected (`AuthError`)         | park   | auth                  | -       | when the API resumes   |
| the application does not exist (a 404,    | park   | application_not_found | -       | when it resumes        |
|   confirmed by GET application)            |        |                       |         |                        |
| a transient error while a pause is on      | park   | the pause's           | -       | when it resumes        |
|   (uploads' breaker too: upload_refused,   |        |                       |         |                        |
|   uploads_failing)                         |        |                       |         |                        |
| 429                                        | retry  | throttled             | -       | backoff, >= Retry-After|
| a POST of unknown outcome                  | retry  | api_error             | -       | backoff                |
| an upload that failed with fresh URLs      | retry  | api_error             | used    | backoff                |
|   (`UploadFailed`: S3's 400 RequestTimeout,|        |                       |         |                        |
|   5xx SlowDown, a reset, a 403 refusal...) |        |                       |         |                        |
| other transient errors (5xx, network, a    | retry  | api_error             | used    | backoff                |
|   4xx on uploadurl or the listing, a 404   |        |                       |         |                        |
|   there with the application present)      |        |                       |         |                        |
| ... the last of `retry.max_attempts`       | fail   | exhausted             | used    | at once                |
| our own state cannot be written (a claim,  | wait   | state_error (warning) | -       | 5 s, doubling with the |
|   marker, journal or spool file: disk full,|        |                       |         | state errors in a row, |
|   EROFS; `SpoolFull` says the bytes needed)|        |                       |         | at most 5 min          |

The tracker turns the upload-limit and EntityTooLarge cases into `InvalidFolder` (it knows the artifact);
the client confirms a 404 with `GET /v1/applications/{id}` before it says `ApplicationNotFound`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace

from watcher.cloud.backoff import Backoff
from watcher.daemon.gate import GLOBAL
from watcher.errors import (
    ApplicationNotFound,
    AuthError,
    ClaimLost,
    FolderChanged,
    FolderUnreadable,
    InvalidFolder,
    LookupInconclusive,
    RejectedError,
    RetryLater,
    StateError,
    TransientError,
    UncertainError,
    UnsafeStateFile,
    WatcherError,
)
from watcher.runfolder.markers import Journal

CHANGED_SECONDS = 2.0       # a folder changed under us: look again after at least this
CLAIM_BUSY_SECONDS = 15.0   # another process holds (or took) the claim: look again after this
SAME_ERROR_LIMIT = 3        # the same I/O error this many times in a row: the folder is invalid
STATE_ERROR_ATTEMPT = 3     # a bug (an unexpected exception): wait as a third retry would
STATE_ERROR_FIRST_SECONDS = 5.0    # our own state could not be written: look again after this,
STATE_ERROR_MAX_SECONDS = 300.0    # ... doubling with each state error in a row, up to this


class Action(enum.Enum):
    FAIL = "fail"      # write the failed marker; the folder is finished
    RETRY = "retry"    # look again later; counted as an outcome "retried"
    WAIT = "wait"      # look again later; not the folder's doing, not counted
    PARK = "park"      # hold until the pause of `scope` ends


@dataclass(frozen=True)
class Verdict:
    """What to do. `journal` is the journal to save (None: leave the file as it is); `delay` (seconds)
    or `at` (a time) says when to look again; `pause` the pause to start for `scope` when parking;
    `event`/`level` what to log; `untrusted` flags a state file of another user (logged as a warning)."""

    action: Action
    reason: str
    error: str
    event: str
    level: str = "info"
    journal: Journal | None = None
    delay: float | None = None
    at: float | None = None
    scope: str | None = None
    pause: str | None = None
    untrusted: bool = False
    trust_journal: bool = True


@dataclass(frozen=True)
class Policy:
    """The settings a verdict depends on (from the current configuration)."""

    max_attempts: int
    backoff: Backoff
    settle_seconds: float


def state_error_delay(in_a_row: int) -> float:
    """How long a folder waits after its `in_a_row`-th state error in a row (1, 2, ...): 5 s, 10 s, 20 s,
    ... at most 5 minutes. No jitter: a full disk is not a stampede on a server."""
    return min(STATE_ERROR_MAX_SECONDS, STATE_ERROR_FIRST_SECONDS * 2.0 ** min(max(0, in_a_row - 1), 16))


def state_error(error: StateError, journal: Journal | None, *, in_a_row: int) -> Verdict:
    """Our own state could not be written (`in_a_row`: this one included): not the folder's fault, no
    attempt used; the error is kept in the journal for `scan` when `journal` is given (the attempt
    holds the claim), and the folder waits with a backoff of its own."""
    return Verdict(Action.WAIT, "state_error", str(error), "state_error", "warning",
                   journal=None if journal is None else replace(journal, state_error=str(error)),
                   delay=state_error_delay(in_a_row))


def verdict(error: WatcherError, journal: Journal, *, policy: Policy, application_id: str,
            blocked_by: str | None, rng: random.Random, state_errors: int = 0) -> Verdict:
    """The decision for an attempt of `application_id`'s folder that raised `error`, given its journal
    (as the attempt left it), the pause that blocks the application now (`blocked_by`, or None) and
    the state errors in a row before this attempt (`state_errors`).
    Raises TypeError for an error this table does not know (a bug: the caller logs it with its trace)."""
    if isinstance(error, UnsafeStateFile):
        return Verdict(Action.FAIL, "invalid", f"invalid folder: {error.problem}", "folder_failed", "error",
                       journal=Journal(attempts=1), untrusted=error.untrusted, trust_journal=False)
    if isinstance(error, InvalidFolder):
        return _fail(journal, "invalid", f"invalid folder: {error.problem}")
    if isinstance(error, RejectedError):
        return _fail(journal, "rejected", f"rejected by the API: {error}")
    if isinstance(error, FolderUnreadable):
        repeats = journal.repeats + 1 if journal.last_error == error.problem else 1
        if repeats >= SAME_ERROR_LIMIT:
            return _fail(replace(journal, repeats=repeats), "invalid",
                         f"invalid folder: {error.problem} ({repeats} times in a row)", count=False)
        return Verdict(Action.RETRY, "unreadable", error.problem, "folder_retrying",
                       journal=replace(journal, repeats=repeats, last_error=error.problem),
                       delay=max(CHANGED_SECONDS, policy.settle_seconds))
    if isinstance(error, FolderChanged):
        return Verdict(Action.RETRY, "changed", error.problem, "folder_retrying",
                       delay=max(CHANGED_SECONDS, policy.settle_seconds))
    if isinstance(error, RetryLater):
        return Verdict(Action.WAIT, "lookup", str(error), "folder_waiting", at=error.at)
    if isinstance(error, LookupInconclusive):
        return _inconclusive(error, journal, policy=policy, blocked_by=blocked_by, rng=rng)
    if isinstance(error, ClaimLost):
        return Verdict(Action.WAIT, "claim_lost", str(error), "folder_claim_lost", "warning",
                       delay=CLAIM_BUSY_SECONDS)
    if isinstance(error, AuthError):
        return Verdict(Action.PARK, "auth", str(error), "folder_parked", scope=GLOBAL, pause="auth")
    if isinstance(error, ApplicationNotFound):
        return Verdict(Action.PARK, "application_not_found", str(error), "folder_parked",
                       scope=application_id, pause="application_not_found")
    if isinstance(error, TransientError):
        return _transient(error, journal, policy=policy, blocked_by=blocked_by, rng=rng)
    if isinstance(error, StateError):
        return state_error(error, journal, in_a_row=state_errors + 1)
    raise TypeError(f"no verdict for {type(error).__name__}: {error}")


def _transient(error: TransientError, journal: Journal, *, policy: Policy, blocked_by: str | None,
               rng: random.Random) -> Verdict:
    if blocked_by is not None:
        return Verdict(Action.PARK, "paused", str(error), "folder_parked", scope=blocked_by)
    # Throttling and POSTs of unknown outcome are not the folder's fault: they do not use up attempts.
    throttled = error.status == 429
    counts = not throttled and not isinstance(error, UncertainError)
    attempts = journal.attempts + (1 if counts else 0)
    if attempts >= policy.max_attempts:
        return _fail(replace(journal, attempts=attempts), "exhausted",
                     f"gave up after {attempts} attempts: {error}", count=False)
    delay = policy.backoff.delay(max(1, attempts), rng)
    if error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return Verdict(Action.RETRY, "throttled" if throttled else "api_error", str(error), "folder_retrying",
                   "warning", journal=replace(journal, attempts=attempts, last_error=str(error)), delay=delay)


def _inconclusive(error: LookupInconclusive, journal: Journal, *, policy: Policy, blocked_by: str | None,
                  rng: random.Random) -> Verdict:
    """The run may exist, so the intents stay and nothing is posted: look again later, backing off with
    the look-ups in a row (up to `retry.backoff_max_seconds`); warned the first time only. Not the
    folder's fault: no attempt is used."""
    if blocked_by is not None:
        return Verdict(Action.PARK, "paused", str(error), "folder_parked", scope=blocked_by)
    count = journal.lookups_inconclusive + 1
    first = journal.lookups_inconclusive == 0
    return Verdict(Action.RETRY, "lookup_inconclusive", str(error),
                   "run_lookup_inconclusive" if first else "folder_retrying", "warning" if first else "info",
                   journal=replace(journal, lookups_inconclusive=count, last_error=str(error)),
                   delay=policy.backoff.delay(count, rng))


def _fail(journal: Journal, reason: str, error: str, *, count: bool = True) -> Verdict:
    """Fail the folder; `count`: this attempt is one more of the journal's attempts."""
    attempts = journal.attempts + 1 if count else journal.attempts
    return Verdict(Action.FAIL, reason, error, "folder_failed", "error", journal=replace(journal, attempts=attempts))
