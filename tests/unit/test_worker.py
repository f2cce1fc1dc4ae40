"""FolderProcessor one step at a time (a real folder, index, gate, store and claims; a stand-in tracker
that raises each error; a stepped clock): one case per row of the failure table (README, verdict.py),
and the worker's guards against producers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog
from helpers import FAILED, TRACKED, marker, write_folder
from worker_harness import T0, Harness

from watcher.cloud.client import RequestOutcome
from watcher.daemon.gate import GLOBAL
from watcher.daemon.index import Stage
from watcher.daemon.verdict import CLAIM_BUSY_SECONDS, SAME_ERROR_LIMIT
from watcher.daemon.worker import POLL_MAX_SECONDS, POLL_SECONDS
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
    SpoolFull,
    StateError,
    TransientError,
    UncertainError,
    UploadFailed,
    UploadRefused,
)
from watcher.runfolder.claims import Claim, Claims
from watcher.runfolder.markers import JOURNAL, Intent, Journal, StateStore

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"value": 7}'}
MAX_ATTEMPTS = 10   # write_config's retry.max_attempts


@pytest.fixture
def h(tmp_path: Path, watched: Path) -> Harness:
    return Harness(tmp_path, watched)


def journal_of(h: Harness, folder: Path) -> Journal:
    return h.store.journal(folder)


# --- tracked ---------------------------------------------------------------------------------------


def test_a_complete_folder_is_tracked_in_one_step(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "ok", FILES)
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert (found.stage, found.inode) == (Stage.FINISHED, folder.stat().st_ino)
    assert [e["event"] for e in events] == ["folder_detected", "folder_complete", "run_tracked"]
    assert h.outcomes.totals() == {"tracked": 1, "failed": 0, "retried": 0}
    assert h.index.is_finished(folder, folder.stat().st_ino)
    assert h.tracker.journals == [Journal()], "the journal is read once and handed to the tracker"


# --- fail at once ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "reason", "message"), [
    (InvalidFolder("f", "no input"), "invalid", "invalid folder: no input"),
    (RejectedError("create_run: HTTP 422: bad name", status=422), "rejected",
     "rejected by the API: create_run: HTTP 422: bad name"),
    # POST .../runs answered 404 while GET application answered 200 (issue 10, item 4).
    (RejectedError("create_run: HTTP 404: instance not found", status=404), "rejected",
     "rejected by the API: create_run: HTTP 404: instance not found"),
    # An artifact over api.max_upload_bytes, before any upload (item 5), or refused by S3 as too large (item 1).
    (InvalidFolder("f", "output output.json is 501,000,000 bytes, over the upload limit of 500,000,000 bytes "
                        "(api.max_upload_bytes)"), "invalid",
     "invalid folder: output output.json is 501,000,000 bytes, over the upload limit of 500,000,000 bytes "
     "(api.max_upload_bytes)"),
    (InvalidFolder("f", "output output.json (6,000,000,000 bytes) refused by the storage as too large "
                        "(put: HTTP 400 EntityTooLarge)"), "invalid",
     "invalid folder: output output.json (6,000,000,000 bytes) refused by the storage as too large "
     "(put: HTTP 400 EntityTooLarge)"),
])
def test_a_folder_the_contract_or_the_api_refuses_is_failed_at_once(
        h: Harness, watched: Path, error: Exception, reason: str, message: str) -> None:
    folder = write_folder(watched, "bad", FILES)
    h.store.save_journal(folder, Journal(attempts=2, intents=[Intent("a" * 32, T0 - 60)]))
    h.tracker.error = error
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert found.stage is Stage.FINISHED
    failed = marker(folder, FAILED)
    assert failed is not None
    assert (failed["reason"], failed["error"], failed["attempts"]) == (reason, message, 3)
    assert journal_of(h, folder) == Journal(intents=[Intent("a" * 32, T0 - 60)]), "open intents are kept"
    (event,) = [e for e in events if e["event"] == "folder_failed"]
    assert (event["log_level"], event["reason"]) == ("error", reason)
    assert h.outcomes.recent_failures()[0]["folder"] == str(folder)


# --- retried, attempts not used up ------------------------------------------------------------------


def test_a_folder_that_changed_is_retried_later_without_using_an_attempt(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "changing", FILES)
    h.tracker.error = FolderChanged(str(folder), "output.json changed during upload")
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    # Looked at again once the folder could have settled (completion.settle_seconds, 5 s by default).
    assert (found.stage, found.at) == (Stage.RETRY_WAIT, T0 + max(2.0, h.config.completion.settle_seconds))
    assert journal_of(h, folder).attempts == 0
    assert [(e["event"], e["reason"]) for e in events if e["event"] == "folder_retrying"] == [
        ("folder_retrying", "changed")]
    assert h.outcomes.series() == {("app-1", "retried", "changed"): 1}
    assert h.index.counts()["retry_wait"] == 1
    assert found.at is not None
    h.clock.now = found.at
    h.tracker.error = None
    assert h.step(folder).stage is Stage.FINISHED


@pytest.mark.parametrize(("status", "error_type", "reason"), [
    (429, TransientError, "throttled"),
    (None, UncertainError, "api_error"),
])
def test_throttling_and_posts_of_unknown_outcome_do_not_use_up_attempts(
        h: Harness, watched: Path, status: int | None, error_type: type[TransientError], reason: str) -> None:
    folder = write_folder(watched, "patient", FILES)
    h.tracker.error = error_type("create_run: no answer", status=status, retry_after=30.0 if status else None)
    for _ in range(MAX_ATTEMPTS + 2):
        found = h.step(folder)
        assert found.stage is Stage.RETRY_WAIT and found.at is not None
        h.clock.now = found.at
    assert marker(folder, FAILED) is None
    assert journal_of(h, folder).attempts == 0
    assert h.outcomes.series() == {("app-1", "retried", reason): MAX_ATTEMPTS + 2}


def test_retry_after_is_honoured(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "throttled", FILES)
    h.tracker.error = TransientError("create_run: HTTP 429", status=429, retry_after=90.0)
    found = h.step(folder)
    assert found.at is not None and found.at >= T0 + 90.0
    assert journal_of(h, folder).next_attempt_at == found.at, "the schedule survives a restart"


def test_transient_errors_use_up_attempts_then_the_folder_is_exhausted(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "flaky-api", FILES)
    h.tracker.error = TransientError("create_run: HTTP 503", status=503)
    for attempt in range(1, MAX_ATTEMPTS):
        found = h.step(folder)
        assert found.stage is Stage.RETRY_WAIT and found.at is not None
        assert journal_of(h, folder).attempts == attempt
        h.clock.now = found.at
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert found.stage is Stage.FINISHED
    failed = marker(folder, FAILED)
    assert failed is not None
    assert (failed["reason"], failed["attempts"]) == ("exhausted", MAX_ATTEMPTS)
    assert failed["error"] == f"gave up after {MAX_ATTEMPTS} attempts: create_run: HTTP 503"
    assert [e["attempts"] for e in events if e["event"] == "folder_failed"] == [MAX_ATTEMPTS]
    assert not (folder / JOURNAL).exists()
    assert h.tracker.calls == MAX_ATTEMPTS


@pytest.mark.parametrize("error", [
    UploadFailed("put: HTTP 400 RequestTimeout: Your socket connection to the server was not read from",
                 status=400, code="RequestTimeout"),
    UploadFailed("put: HTTP 503 SlowDown: Please reduce your request rate.", status=503, code="SlowDown"),
    UploadFailed("put: ReadTimeout"),
    UploadRefused("put: HTTP 403 SignatureDoesNotMatch: The request signature we calculated does not match",
                  status=403, code="SignatureDoesNotMatch"),
    TransientError("uploadurl: HTTP 404: not found", status=404),   # the application is there (item 4)
], ids=["request-timeout", "slow-down", "timeout", "refused", "uploadurl-404"])
def test_a_failed_upload_uses_an_attempt_names_its_code_and_ends_exhausted(
        h: Harness, watched: Path, error: TransientError) -> None:
    """Issue 10, item 1: no upload fault rejects a folder; a file that can never be uploaded ends exhausted."""
    folder = write_folder(watched, "upload-fault", FILES)
    h.tracker.error = error
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert found.stage is Stage.RETRY_WAIT and marker(folder, FAILED) is None
    assert (journal_of(h, folder).attempts, journal_of(h, folder).last_error) == (1, str(error))
    (retrying,) = [e for e in events if e["event"] == "folder_retrying"]
    assert (retrying["reason"], retrying["error"], retrying["log_level"]) == ("api_error", str(error), "warning")
    h.store.save_journal(folder, Journal(attempts=MAX_ATTEMPTS - 1))
    assert found.at is not None
    h.clock.now = found.at
    assert h.step(folder).stage is Stage.FINISHED
    failed = marker(folder, FAILED)
    assert failed is not None
    assert (failed["reason"], failed["error"]) == ("exhausted", f"gave up after {MAX_ATTEMPTS} attempts: {error}")


def test_uploads_refused_across_folders_park_them_without_using_attempts(h: Harness, watched: Path) -> None:
    """The uploads' own breaker trips while the attempt is under way: the folder is parked, not retried."""
    folder = write_folder(watched, "refused", FILES)
    second = write_folder(watched, "refused-too", FILES)
    h.tracker.error = UploadRefused("put: HTTP 403 SignatureDoesNotMatch", status=403, code="SignatureDoesNotMatch")

    def every_put_refused(run: object, journal: Journal) -> None:
        for _ in range(h.gate.upload_failure_threshold):
            h.gate.observe(RequestOutcome("put", 403, 0.01, UploadRefused, "SignatureDoesNotMatch"))

    h.tracker.meanwhile = every_put_refused
    assert (h.step(folder).stage, h.gate.pauses()[GLOBAL].reason) == (Stage.PARKED, "upload_refused")
    assert h.step(second).stage is Stage.PARKED
    assert h.tracker.calls == 1, "no attempt while uploads are paused"
    assert journal_of(h, folder).attempts == 0 and marker(folder, FAILED) is None
    h.tracker.error = h.tracker.meanwhile = None
    h.gate.resume(GLOBAL)
    assert h.step(folder).stage is Stage.FINISHED and h.step(second).stage is Stage.FINISHED


def test_a_restart_honours_the_journals_next_attempt(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "scheduled", FILES)
    h.store.save_journal(folder, Journal(attempts=3, next_attempt_at=T0 + 500))
    found = h.step(folder)
    assert (found.stage, found.at) == (Stage.RETRY_WAIT, T0 + 500)
    assert h.tracker.calls == 0


# --- waiting: not the folder's doing, not counted ---------------------------------------------------


@pytest.mark.parametrize(("error", "reason", "event", "at"), [
    (RetryLater("run not in the listing yet", at=T0 + 25), "lookup", "folder_waiting", T0 + 25),
    (ClaimLost("taken over"), "claim_lost", "folder_claim_lost", T0 + CLAIM_BUSY_SECONDS),
])
def test_waits_are_not_retries(h: Harness, watched: Path, error: Exception, reason: str, event: str,
                               at: float) -> None:
    folder = write_folder(watched, "waiting", FILES)
    h.tracker.error = error
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert (found.stage, found.at) == (Stage.RETRY_WAIT, at)
    assert event in [e["event"] for e in events]
    assert h.outcomes.totals() == {"tracked": 0, "failed": 0, "retried": 0}
    assert journal_of(h, folder).attempts == 0


def test_our_own_state_error_is_a_warning_with_its_own_backoff_from_5_s_to_5_min(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "disk-full", FILES)
    problem = "spool directory /state/spool: No space left on device: input (as an archive) needs up to 9,000 bytes"
    h.tracker.error = SpoolFull("/state/spool", "No space left on device", "input (as an archive)", 9000, 100)
    delays = []
    with structlog.testing.capture_logs() as events:
        for _ in range(9):
            found = h.step(folder)
            assert found.stage is Stage.RETRY_WAIT and found.reason == "state_error" and found.at is not None
            delays.append(found.at - h.clock.now)
            assert h.index.waiting_with("state_error") == [(folder, f"{problem}, 100 free")]
            h.clock.now = found.at
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    logged = [e for e in events if e["event"] == "state_error"]
    assert len(logged) == 9 and {e["log_level"] for e in logged} == {"warning"}
    assert not [e for e in events if e["log_level"] in ("error", "critical") or "exc_info" in e]
    assert marker(folder, FAILED) is None and journal_of(h, folder).attempts == 0, "never an attempt"
    assert h.outcomes.totals() == {"tracked": 0, "failed": 0, "retried": 0}
    assert journal_of(h, folder).state_error == f"{problem}, 100 free", "kept for scan"

    h.tracker.error = None   # space was freed: tracked, and the next state error starts at 5 s again
    assert h.step(folder).stage is Stage.FINISHED
    assert h.index.waiting_with("state_error") == []


def test_a_claim_that_cannot_be_written_is_a_state_error_warning_leaving_nothing(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "full", FILES)

    class DiskFull(Claims):
        def acquire(self, folder: object) -> Claim | None:
            raise StateError(f"{folder}: cannot create claim: No space left on device")

    h.processor.attempts.claims = DiskFull(clock=h.clock, store=h.store)
    with structlog.testing.capture_logs() as events:
        first = h.step(folder)
        h.clock.now = first.at or 0.0
        second = h.step(folder)
    assert (first.stage, first.reason, first.at) == (Stage.RETRY_WAIT, "state_error", T0 + 5.0)
    assert (second.stage, second.at) == (Stage.RETRY_WAIT, T0 + 5.0 + 10.0)
    logged = [e for e in events if e["event"] == "state_error"]
    assert [(e["log_level"], e["pending"]) for e in logged] == [("warning", "claim")] * 2
    assert not [e for e in events if e["log_level"] in ("error", "critical") or "exc_info" in e]
    assert sorted(os.listdir(folder)) == ["DONE", "input.json", "output.json"]


def test_a_claim_held_by_another_process_is_looked_at_again_later(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "busy", FILES)
    other = h.claims.acquire(folder)
    assert other is not None
    found = h.step(folder)
    assert (found.stage, found.at) == (Stage.RETRY_WAIT, T0 + CLAIM_BUSY_SECONDS)
    assert h.tracker.calls == 0
    h.claims.release(other)


# --- an inconclusive run look-up: never posted again, waits with backoff -------------------------------


def inconclusive(cause: str = "page_limit") -> LookupInconclusive:
    return LookupInconclusive("app-1", cause, "2000 pages read, api.lookup_max_pages")


def test_an_inconclusive_look_up_waits_with_growing_backoff_warns_once_and_uses_no_attempt(
        tmp_path: Path, watched: Path) -> None:
    h = Harness(tmp_path, watched, retry={"max_attempts": 3, "backoff_initial_seconds": 1, "backoff_max_seconds": 8})
    folder = write_folder(watched, "maybe-posted", FILES)
    intent = Intent("a" * 32, T0 - 60)
    h.store.save_journal(folder, Journal(intents=[intent]))
    h.tracker.error = inconclusive()

    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert found.stage is Stage.RETRY_WAIT and found.at is not None
    assert T0 + 0.5 <= found.at <= T0 + 1
    [warned] = [e for e in events if e["event"] == "run_lookup_inconclusive"]
    assert (warned["log_level"], warned["cause"], warned["reason"]) == ("warning", "page_limit", "lookup_inconclusive")
    assert "--repost" in warned["hint"]
    journal = journal_of(h, folder)
    assert (journal.lookups_inconclusive, journal.attempts, journal.intents) == (1, 0, [intent])
    assert journal.next_attempt_at == found.at, "the backoff survives a restart"
    assert journal.last_error == str(inconclusive())
    assert h.index.counts()["retry_wait"] == 1
    assert h.index.waiting_for("lookup_inconclusive") == [folder]

    delays = []
    with structlog.testing.capture_logs() as events:
        for _ in range(8):   # far more than max_attempts
            h.clock.now = found.at
            before = h.clock.now
            found = h.step(folder)
            assert found.stage is Stage.RETRY_WAIT and found.at is not None
            delays.append(found.at - before)
    assert "run_lookup_inconclusive" not in [e["event"] for e in events], "warned once, not on every retry"
    assert {e["reason"] for e in events if e["event"] == "folder_retrying"} == {"lookup_inconclusive"}
    assert all(d <= 8 for d in delays) and all(d >= 4 for d in delays[3:]), delays   # grows, up to the maximum
    assert marker(folder, FAILED) is None
    journal = journal_of(h, folder)
    assert (journal.lookups_inconclusive, journal.attempts, journal.intents) == (9, 0, [intent])
    assert h.outcomes.series() == {("app-1", "retried", "lookup_inconclusive"): 9}
    assert h.tracker.calls == 9


def test_an_inconclusive_look_up_after_a_restart_still_shows_as_such(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "restarted", FILES)
    h.store.save_journal(folder, Journal(next_attempt_at=T0 + 300, lookups_inconclusive=2,
                                         intents=[Intent("a" * 32, T0 - 600)]))
    found = h.step(folder)
    assert (found.stage, found.at) == (Stage.RETRY_WAIT, T0 + 300)
    assert h.index.waiting_for("lookup_inconclusive") == [folder]
    assert h.tracker.calls == 0


def test_an_inconclusive_look_up_while_a_pause_is_on_parks(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "paused-lookup", FILES)
    h.tracker.error = inconclusive("page_error")

    def outage(run: object, journal: Journal) -> None:
        h.gate.key_rejected("rejected while we were looking")

    h.tracker.meanwhile = outage
    found = h.step(folder)
    assert (found.stage, found.scope) == (Stage.PARKED, GLOBAL)
    assert journal_of(h, folder).lookups_inconclusive == 0


# --- parked --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "scope", "pause"), [
    (AuthError("API key rejected (HTTP 401): no", status=401), GLOBAL, "auth"),
    (ApplicationNotFound("app-1"), "app-1", "application_not_found"),
])
def test_a_rejected_key_or_a_missing_application_parks_the_folder_and_pauses_the_gate(
        h: Harness, watched: Path, error: Exception, scope: str, pause: str) -> None:
    folder = write_folder(watched, "parked", FILES)
    second = write_folder(watched, "second", FILES)
    h.tracker.error = error
    assert h.step(folder) .stage is Stage.PARKED
    assert h.gate.pauses()[scope].reason == pause
    # Another folder of the application is parked without an attempt while the pause lasts.
    assert h.step(second).stage is Stage.PARKED
    assert h.tracker.calls == 1
    assert h.index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 2}
    assert marker(folder, FAILED) is None and journal_of(h, folder).attempts == 0
    h.tracker.error = None
    h.gate.resume(scope)
    assert h.index.counts()["queued"] == 2
    assert h.step(folder).stage is Stage.FINISHED and h.step(second).stage is Stage.FINISHED


def test_a_transient_error_while_a_pause_is_on_parks_instead_of_retrying(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "during-outage", FILES)
    h.gate.key_rejected("rejected")
    h.gate.resume(GLOBAL)
    h.tracker.error = TransientError("create_run: HTTP 503", status=503)

    def outage(run: object, journal: Journal) -> None:
        h.gate.key_rejected("rejected again while we were uploading")

    h.tracker.meanwhile = outage
    found = h.step(folder)
    assert (found.stage, found.scope) == (Stage.PARKED, GLOBAL)
    assert journal_of(h, folder).attempts == 0


# --- the worker's guards against producers --------------------------------------------------------------


def test_the_same_io_error_three_times_in_a_row_makes_the_folder_invalid(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "bad-disk", FILES)
    h.tracker.error = FolderUnreadable(str(folder), "input.json: Input/output error")
    with structlog.testing.capture_logs() as events:
        for attempt in range(1, SAME_ERROR_LIMIT):
            found = h.step(folder)
            assert found.stage is Stage.RETRY_WAIT and found.at is not None, f"attempt {attempt} is retried"
            assert marker(folder, FAILED) is None
            assert journal_of(h, folder).repeats == attempt
            h.clock.now = found.at
        assert h.step(folder).stage is Stage.FINISHED
    failed = marker(folder, FAILED)
    assert failed is not None and failed["reason"] == "invalid"
    assert failed["error"] == f"invalid folder: input.json: Input/output error ({SAME_ERROR_LIMIT} times in a row)"
    assert [e["reason"] for e in events if e["event"] == "folder_retrying"] == ["unreadable"] * (SAME_ERROR_LIMIT - 1)
    assert not any(e["event"] == "folder_error" for e in events), "an expected condition is not a bug"


def test_a_different_io_error_starts_the_count_again(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "flaky", FILES)
    for problem in ("a.csv: Input/output error", "a.csv: Input/output error", "b.csv: Input/output error",
                    "b.csv: Input/output error"):
        h.tracker.error = FolderUnreadable(str(folder), problem)
        found = h.step(folder)
        assert found.stage is Stage.RETRY_WAIT and found.at is not None
        h.clock.now = found.at
    assert marker(folder, FAILED) is None
    h.tracker.error = None
    assert h.step(folder).stage is Stage.FINISHED
    tracked = marker(folder, TRACKED)
    assert tracked is not None and tracked["run_id"] == "run-flaky"
    assert not (folder / JOURNAL).exists()


def test_an_unwatched_incomplete_folder_is_looked_at_less_often_as_it_ages(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "slow-producer", {"input.json": "{}"}, marker=None)
    delays = []
    for age in (0.0, 5.0, 60.0, 600.0, 1200.0, 7200.0):
        h.clock.now = T0 + age
        found = h.step(folder)
        assert found.stage is Stage.INCOMPLETE and found.at is not None
        delays.append(round(found.at - h.clock.now, 3))
    assert delays == [POLL_SECONDS, 5.0, 60.0, POLL_MAX_SECONDS, POLL_MAX_SECONDS, POLL_MAX_SECONDS]
    assert h.watch_requests == [folder] * 6, "a watch is asked for every time (it may become possible)"
    assert h.tracker.calls == 0
    assert h.index.incomplete() == {folder: T0}
    assert h.index.counts() == {"queued": 0, "in_flight": 0, "retry_wait": 0, "parked": 0}, \
        "an incomplete folder is not pending"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", [JOURNAL, ".nextmv-claim", ".nextmv-tracked.json", FAILED])
def test_a_fifo_under_a_state_file_name_fails_the_folder_without_blocking(
        h: Harness, watched: Path, name: str) -> None:
    folder = write_folder(watched, "fifo", FILES)
    os.mkfifo(folder / name)
    assert h.step(folder).stage is Stage.FINISHED
    failed = marker(folder, FAILED)
    assert failed is not None
    assert (failed["reason"], failed["error"]) == ("invalid", f"invalid folder: {name} is a FIFO, not a regular file")
    assert h.tracker.calls == 0, "nothing is uploaded for an invalid folder"
    assert h.step(folder).stage is Stage.FINISHED, "a failed folder stays failed"
    assert h.tracker.calls == 0


def test_a_state_file_of_another_user_is_not_trusted_and_is_logged(h: Harness, watched: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    folder = write_folder(watched, "forged", FILES)
    (folder / TRACKED).write_text('{"run_id": "run-forged"}')
    os.chown(folder / TRACKED, 12345, 12345)
    with structlog.testing.capture_logs() as events:
        assert h.step(folder).stage is Stage.FINISHED
    (warning,) = [e for e in events if e["event"] == "state_file_untrusted"]
    assert (warning["log_level"], warning["file"], warning["owner_uid"]) == ("warning", TRACKED, 12345)
    failed = marker(folder, FAILED)
    assert failed is not None and failed["reason"] == "invalid" and "owned by uid 12345" in failed["error"]
    assert h.tracker.calls == 0


def test_state_owners_makes_another_users_marker_ours(tmp_path: Path, watched: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    h = Harness(tmp_path, watched, state_owners=[12345])
    folder = write_folder(watched, "other-host", FILES)
    (folder / TRACKED).write_text('{"run_id": "run-elsewhere"}')
    os.chown(folder / TRACKED, 12345, 12345)
    assert h.step(folder).stage is Stage.FINISHED
    assert marker(folder, FAILED) is None and h.tracker.calls == 0
    assert h.index.is_finished(folder, folder.stat().st_ino)


def test_a_vanished_folder_leaves_the_index(h: Harness, watched: Path) -> None:
    folder = write_folder(watched, "gone", FILES)
    h.index.offer(folder)
    folder.rename(watched / ".moved-away")
    assert h.step(folder).stage is Stage.GONE
    assert folder not in h.index


def test_disk_full_saving_the_journal_after_an_api_error_is_a_state_error_and_the_retry_stays(
        tmp_path: Path, watched: Path) -> None:
    class DiskFullStore(StateStore):
        def save_journal(self, folder: object, journal: Journal) -> None:
            raise StateError(f"{folder}: cannot write {JOURNAL}: No space left on device")

    h = Harness(tmp_path, watched, store_factory=lambda c: DiskFullStore(c.state_dir, c.state_owners))
    folder = write_folder(watched, "run-1", FILES)
    h.tracker.error = TransientError("HTTP 503 from POST /runs", status=503)
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    names = [e["event"] for e in events]
    assert "folder_error" not in names and "state_error" in names
    assert [(e["log_level"], e["pending"]) for e in events if e["event"] == "state_error"] == [("warning", "journal")]
    assert found.stage is Stage.RETRY_WAIT and found.at is not None and found.at > T0
    assert sorted(os.listdir(folder)) == ["DONE", "input.json", "output.json"]


def test_a_marker_written_while_the_folder_watch_is_made_is_not_missed(tmp_path: Path, watched: Path) -> None:
    """A producer renames its folder into place and writes the marker right after: the worker's first look
    may come between the two, and the marker may appear before the folder's watch is in place, so that no
    event will ever tell. A newly watched folder is looked at once more, at once (seen in the e2e suite:
    a folder waited for an event that never came)."""
    h = Harness(tmp_path, watched, watchable=True)
    folder = write_folder(watched, "racing", FILES, marker=None)

    def watch_while_the_producer_finishes(path: Path) -> bool:
        (folder / "DONE").write_text("")
        return True

    h.processor.watch_folder = watch_while_the_producer_finishes
    found = h.step(folder)
    assert found.stage is Stage.INCOMPLETE and found.at == h.clock.now
    assert h.step(folder).stage is Stage.FINISHED
    tracked = marker(folder, TRACKED)
    assert tracked is not None and tracked["run_id"] == "run-racing"


def test_a_watched_incomplete_folder_waits_for_its_events_after_the_second_look(tmp_path: Path, watched: Path) -> None:
    h = Harness(tmp_path, watched, watchable=True)
    folder = write_folder(watched, "writing", {"input.json": "{}"}, marker=None)
    assert h.step(folder).at == h.clock.now   # newly watched: once more at once
    found = h.step(folder)
    assert found.stage is Stage.INCOMPLETE and found.at is None, "then events tell"
    assert h.tracker.calls == 0
