"""Pausing and resuming work against the API: the one home of that flow.

These things pause work, and this module alone decides, probes and logs them (`api_paused`,
`application_paused`, `api_resumed`):

- the API rejects the key (401/403): all work pauses (scope "*"), reason `auth`;
- an application does not exist (404): that application's work pauses (scope = its id);
- every recent API request failed (the circuit breaker: `failure_threshold` transient failures in a
  row, seen through the client's request outcomes; a 429 is an answer, not a failure): all work pauses,
  reason `unreachable`;
- every recent upload failed (the uploads' own breaker: `upload_failure_threshold` failed presigned
  PUTs in a row, across folders; every PUT follows a successful upload-URL call, so the API's count
  cannot see them): all work pauses, reason `upload_refused` when each was a 403 refusal
  (SignatureDoesNotMatch, ...: a proxy or clock skew), else `uploads_failing`. Folders that fail
  meanwhile are parked without using up attempts (see `verdict`).

It also holds: a 429 with `Retry-After` on an API call holds every API call of every application (the
limit's scope is undocumented, so it is taken to be the key's) until then, capped at RETRY_AFTER_CAP
(`held_for`, which the client asks before each API call; logged as `api_held` when a hold begins). A
hold is no pause: nothing is parked or probed, no attempt is used, it simply ends. With `processes` > 1
the hold is every process's (`shared`: see `watcher.daemon.sharedhold`).

A paused scope is probed from the main loop (`probe`): one `GET /v1/applications/{id}` without
retries, with a growing interval (for an upload pause: a fresh upload URL and a PUT of `{}`, so
that only a working upload resumes work); a paused key is re-read from its source first, so fixing
the key file or credential is enough. Its answer resumes the scope (its parked folders are due again: the
`unpark` callback, the folder index's), keeps it paused, or (a global pause answered with 404) turns it
into a pause of that application. The lock guards only the pauses and the breaker's count; it is never
held while calling the client, the index or the logger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from watcher.cloud.backoff import Backoff
from watcher.cloud.client import RETRY_AFTER_CAP, NextmvClient, RequestOutcome
from watcher.cloud.statuses import PUT
from watcher.config import Config, resolve_api_key
from watcher.daemon.sharedhold import SharedHold
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    ConfigError,
    TransientError,
    UploadFailed,
    UploadRefused,
)
from watcher.logs import REDACTOR

log = structlog.get_logger("watcher.daemon.gate")

GLOBAL = "*"
UPLOAD_REASONS = ("upload_refused", "uploads_failing")
UPLOAD_HINTS = {
    "upload_refused": "every recent upload was refused by the storage: check the system clock (skew) and any "
                      "proxy that rewrites requests; work resumes by itself once a test upload succeeds",
    "uploads_failing": "every recent upload failed; work resumes by itself once a test upload succeeds",
}


@dataclass
class Pause:
    reason: str            # "auth" | "unreachable" | "application_not_found" | "upload_refused" | "uploads_failing"
    message: str
    since: float
    probe_at: float
    probes: int = 0


class Gate:
    """Thread-safe. Workers ask `blocked(app)`; the client reports every request (`observe`)."""

    def __init__(self, clock: Callable[[], float], *, config: Callable[[], Config], client: NextmvClient | None,
                 unpark: Callable[[str], int], failure_threshold: int = 5, upload_failure_threshold: int = 10,
                 probe_backoff: Backoff | None = None, shared: SharedHold | None = None) -> None:
        self.clock = clock
        self.shared = shared   # the other processes' holds too (`processes` > 1)
        self.config = config
        self.client = client
        self.unpark = unpark
        self.failure_threshold = failure_threshold
        self.upload_failure_threshold = upload_failure_threshold
        self.probe_backoff = probe_backoff or Backoff(1.0, 60.0)
        self._lock = threading.Lock()
        self._paused: dict[str, Pause] = {}
        self._failures = 0
        self._last_failure = ""
        self._upload_failures = 0
        self._upload_refusals = 0   # how many of the failed PUTs in a row were 403 refusals
        self._held_until = 0.0      # a 429's Retry-After: no API call before then (clock time)

    # -- what workers and observers see ----------------------------------------------------

    def blocked(self, application_id: str) -> str | None:
        """The scope whose pause holds `application_id`'s work, or None."""
        with self._lock:
            if GLOBAL in self._paused:
                return GLOBAL
            return application_id if application_id in self._paused else None

    def is_paused(self) -> bool:
        with self._lock:
            return bool(self._paused)

    def failing(self) -> tuple[int, str] | None:
        """How many API requests failed in a row (transiently) and the last one ("uploadurl: no response"),
        or None when the last one succeeded."""
        with self._lock:
            return (self._failures, self._last_failure) if self._failures else None

    def held_for(self) -> float:
        """Seconds every API call must still wait (a 429's Retry-After), 0 when none: fits the client's `hold`."""
        with self._lock:
            until = self._held_until
        if self.shared is not None:
            until = max(until, self.shared.until())
        return max(0.0, until - self.clock())

    def pauses(self) -> dict[str, Pause]:
        with self._lock:
            return {scope: Pause(**vars(p)) for scope, p in self._paused.items()}

    def next_probe_at(self) -> float | None:
        with self._lock:
            return min((p.probe_at for p in self._paused.values()), default=None)

    # -- what happened -----------------------------------------------------------------------

    def key_rejected(self, message: str) -> None:
        """The API refused the key: pause all work (logged once)."""
        if self._close(GLOBAL, "auth", message):
            log.error("api_paused", reason="auth", error=message,
                      hint="check the API key; work resumes by itself once it is accepted")

    def application_missing(self, application_id: str, message: str) -> None:
        """The application does not exist: pause its work (logged once)."""
        if self._close(application_id, "application_not_found", message):
            log.error("application_paused", reason="application_not_found", application_id=application_id,
                      error=message)

    def observe(self, outcome: RequestOutcome) -> None:
        """One HTTP attempt's outcome (the client's observer): a success resets the breaker; a transient
        failure counts, and `failure_threshold` in a row pause all work as unreachable. Presigned PUTs
        have their own count (`_observe_upload`) and leave the API's alone."""
        if outcome.endpoint == PUT:
            self._observe_upload(outcome)
            return
        if outcome.error is None:
            with self._lock:
                self._failures = 0
            return
        if outcome.status == 429:   # throttled: the API answers, so it is no outage for the breaker
            if outcome.retry_after is not None:
                self._hold(outcome)
            return
        if not issubclass(outcome.error, TransientError):
            return
        message = f"{outcome.endpoint}: {outcome.status or 'no response'}"
        with self._lock:
            self._failures += 1
            self._last_failure = message
            tripped = self._failures >= self.failure_threshold
        if tripped and self._close(GLOBAL, "unreachable", message):
            log.error("api_paused", reason="unreachable", endpoint=outcome.endpoint, status=outcome.status,
                      hint="every recent request failed; work resumes by itself when the API answers")

    def _hold(self, outcome: RequestOutcome) -> None:
        """Hold every API call until the 429's Retry-After has passed (a later end extends the hold)."""
        assert outcome.retry_after is not None
        now = self.clock()
        until = now + min(outcome.retry_after, RETRY_AFTER_CAP)
        with self._lock:
            began = self._held_until <= now
            self._held_until = max(self._held_until, until)
        if self.shared is not None:
            self.shared.extend(until)
        if began:
            log.info("api_held", endpoint=outcome.endpoint, seconds=round(until - now, 3),
                     hint="the API asked to slow down (429 with Retry-After): every application's API calls wait")

    def _observe_upload(self, outcome: RequestOutcome) -> None:
        """A PUT's outcome: a success resets the uploads' count; a failed upload counts (a refused size
        does not: that is the artifact's problem); `upload_failure_threshold` in a row pause all work."""
        if outcome.error is None:
            with self._lock:
                self._upload_failures = self._upload_refusals = 0
            return
        if not issubclass(outcome.error, UploadFailed):
            return
        with self._lock:
            self._upload_failures += 1
            self._upload_refusals += 1 if issubclass(outcome.error, UploadRefused) else 0
            tripped = self._upload_failures >= self.upload_failure_threshold
            refused = self._upload_refusals == self._upload_failures
        if not tripped:
            return
        reason = "upload_refused" if refused else "uploads_failing"
        message = f"put: {outcome.status or 'no response'}" + (f" {outcome.code}" if outcome.code else "")
        if self._close(GLOBAL, reason, message):
            log.error("api_paused", reason=reason, endpoint=PUT, status=outcome.status, code=outcome.code,
                      hint=UPLOAD_HINTS[reason])

    def forget_applications(self, keep: set[str]) -> None:
        """A reload removed applications: their pauses end (their folders left the index)."""
        with self._lock:
            for scope in [s for s in self._paused if s != GLOBAL and s not in keep]:
                del self._paused[scope]

    def _close(self, scope: str, reason: str, message: str) -> bool:
        """Pause `scope`; True when it was not paused before."""
        now = self.clock()
        with self._lock:
            if scope in self._paused:
                return False
            self._paused[scope] = Pause(reason, message, now, now + self.probe_backoff.delay(1))
            return True

    # -- probing and resuming ------------------------------------------------------------------

    def probe(self) -> None:
        """Probe every pause that is due (from the main loop); resume those the API answers."""
        now = self.clock()
        with self._lock:
            due = [(scope, p.reason) for scope, p in self._paused.items() if p.probe_at <= now]
        for scope, reason in due:
            self._probe(scope, reason)

    def _probe(self, scope: str, reason: str) -> None:
        config = self.config()
        if self.client is None or not config.watch:
            return
        app = scope if scope != GLOBAL else config.watch[0].application_id
        if reason == "auth":
            self._reload_key(config)
        try:
            if reason in UPLOAD_REASONS:
                self.client.try_upload(app)
            else:
                self.client.get_application(app, attempts=1)
        except UploadRefused as exc:
            self._still(scope, "upload_refused", str(exc))
        except UploadFailed as exc:
            self._still(scope, "uploads_failing", str(exc))
        except AuthError as exc:
            self._still(scope, "auth", str(exc))
        except ApplicationNotFound as exc:
            if scope == GLOBAL:
                self.resume(GLOBAL)
                self.application_missing(app, str(exc))
            else:
                self._still(scope, "application_not_found", str(exc))
        except ApiError as exc:   # for an upload pause, the upload-URL call failed: uploads were not tested
            self._still(scope, reason if reason in UPLOAD_REASONS else "unreachable", str(exc))
        else:
            self.resume(scope)

    def resume(self, scope: str) -> None:
        """End the pause of `scope` (if any): its parked folders are due again; `api_resumed` is logged."""
        with self._lock:
            pause = self._paused.pop(scope, None)
            self._failures = self._upload_failures = self._upload_refusals = 0
        if pause is None:
            return
        folders = self.unpark(scope)
        log.info("api_resumed", scope="all" if scope == GLOBAL else scope,
                 paused_for=round(self.clock() - pause.since, 1), reason=pause.reason, folders=folders)

    def _still(self, scope: str, reason: str, message: str) -> None:
        with self._lock:
            p = self._paused.get(scope)
            if p is None:
                return
            p.probes += 1
            p.reason, p.message = reason, message
            p.probe_at = self.clock() + self.probe_backoff.delay(p.probes + 1)

    def _reload_key(self, config: Config) -> None:
        assert self.client is not None
        try:
            key, _ = resolve_api_key(config.api)
        except ConfigError:
            return
        REDACTOR.add_secret(key)
        self.client.set_api_key(key)
